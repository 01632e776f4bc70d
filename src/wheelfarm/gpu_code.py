"""Which GPUs a wheel's compiled code runs on, from what its audit listed (``archs.sass`` / ``archs.ptx`` of
``<wheel>.audit.json``: ``sm_80``, ``sm_90a``, ``sm_100f``, ``compute_120``).

CUDA's rules: SASS for ``sm_XY`` runs on compute capability X.Z with Z ≥ Y (same major); the arch-specific ``sm_XYa``
only on X.Y itself; the family-specific ``sm_XYf`` on X.Z with Z ≥ Y; PTX for ``compute_XY`` is compiled by the driver
for any GPU of capability ≥ X.Y. Used by ``resolve`` and the mirror's home page.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_ARCH = re.compile(r"^(?:sm|compute)_(\d+)(\d)([af]?)$")


@dataclass(frozen=True)
class GpuCode:
    sass: tuple[str, ...] = ()
    ptx: tuple[str, ...] = ()

    @classmethod
    def from_audit(cls, archs: object) -> GpuCode | None:
        """From an audit's ``archs`` value; None when it lists no GPU code at all (or is not that shape)."""
        if not isinstance(archs, dict):
            return None
        sass, ptx = tuple(map(str, archs.get("sass") or ())), tuple(map(str, archs.get("ptx") or ()))
        return cls(sass, ptx) if sass or ptx else None

    @classmethod
    def from_list(cls, archs: Sequence[str]) -> GpuCode:
        """From one list (``Entry.gpu_code``: ``sm_90``, ``compute_90``)."""
        return cls(tuple(a for a in archs if a.startswith("sm_")), tuple(a for a in archs if a.startswith("compute_")))

    def runs_on(self, gpu: tuple[int, int]) -> bool:
        for arch in self.sass:
            if (m := _ARCH.match(arch)) and int(m[1]) == gpu[0]:
                minor, kind = int(m[2]), m[3]
                if (kind == "a" and minor == gpu[1]) or (kind != "a" and minor <= gpu[1]):
                    return True
        return any((m := _ARCH.match(arch)) and (int(m[1]), int(m[2])) <= gpu for arch in self.ptx)

    def describe(self) -> str:
        return ", ".join([*self.sass, *(f"{p} PTX" for p in self.ptx)]) or "none"
