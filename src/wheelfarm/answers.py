"""The lines a person pastes to install one wheel of the mirror: pip, uv, requirements.txt, a Dockerfile, the
environment-variable forms.

Every line pins the wheel's whole version, local label included (``flash-attn==2.8.3.post2+cu13torch2.11cxx11abiTRUE``):
by PEP 440 only a file with that exact label matches, so no other index (PyPI's sdist, another variant) can win and
nothing compiles. The variant index is an *extra* index: the default one (PyPI, or the site's proxy) stays, so the
wheel's runtime requirements (einops) resolve from it, and torch — pinned ``torch==X.Y.*`` by the wheel and already
installed — is left as it is. pip merges all indexes; uv searches extra indexes first and takes flash-attn from the
first that has it (its default ``first-index`` strategy), so both end on the same file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    requirement: str  # flash-attn==2.8.3.post2+cu13torch2.11cxx11abiTRUE
    index_url: str  # <mirror>/<label>/simple/

    @property
    def pip(self) -> str:
        return f"pip install '{self.requirement}' --extra-index-url {self.index_url}"

    @property
    def uv(self) -> str:
        return f"uv pip install '{self.requirement}' --extra-index-url {self.index_url}"

    @property
    def requirements_txt(self) -> str:
        return f"--extra-index-url {self.index_url}\n{self.requirement}"

    @property
    def dockerfile(self) -> str:
        return f"RUN pip install --no-cache-dir '{self.requirement}' --extra-index-url {self.index_url}"

    @property
    def pip_env(self) -> str:
        return f"PIP_EXTRA_INDEX_URL={self.index_url} pip install '{self.requirement}'"

    @property
    def uv_env(self) -> str:
        return f"UV_INDEX={self.index_url} uv pip install '{self.requirement}'"

    def lines(self) -> dict[str, str]:
        """Every form, keyed as ``resolve --json`` prints them."""
        return {"pip": self.pip, "uv": self.uv, "requirements.txt": self.requirements_txt,
                "Dockerfile": self.dockerfile, "pip (env)": self.pip_env, "uv (env)": self.uv_env}


def for_wheel(mirror: str, file: str) -> Answer:
    """The answer for ``file`` (``<dist>-<version>-…whl``) on the mirror rooted at ``mirror``."""
    from packaging.utils import parse_wheel_filename

    name = parse_wheel_filename(file)[0]
    version = file.split("-")[1]  # as the file spells it: packaging lower-cases a local label
    label = version.partition("+")[2]
    index = f"{mirror.rstrip('/')}/{label}/simple/" if label else f"{mirror.rstrip('/')}/simple/"
    return Answer(f"{name}=={version}", index)
