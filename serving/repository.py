"""Find and load the models to serve: one ``.onnx`` file, or a repository in Triton's layout
``REPO/NAME/VERSION/model.onnx`` (several models and versions; the newest answers by default).
"""

from __future__ import annotations

from pathlib import Path

from .errors import NotFound
from .runtime import ModelRuntime


def discover(path: str | Path) -> dict[str, dict[str, Path]]:
    """``{name: {version: model.onnx}}`` for a file or a Triton-layout directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Model path {str(path)!r} does not exist; expected an .onnx file or a model "
            "repository laid out as REPO/NAME/VERSION/model.onnx."
        )
    if path.is_file():
        if path.suffix != ".onnx":
            raise ValueError(f"Model file {str(path)!r} is not an .onnx file.")
        return {path.stem: {"1": path}}
    found: dict[str, dict[str, Path]] = {}
    for model_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        versions = {
            v.name: v / "model.onnx"
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / "model.onnx").is_file()
        }
        if versions:
            found[model_dir.name] = versions
    if not found:
        raise ValueError(
            f"No models found under {str(path)!r}; expected REPO/NAME/VERSION/model.onnx with "
            "VERSION a positive integer (Triton's layout)."
        )
    return found


class ModelRepository:
    """Loaded runtimes by name and version; resolves what a request names, and remembers why a
    version was unloaded (the repository index and the 404 of a request say it)."""

    def __init__(
        self,
        models: dict[str, dict[str, ModelRuntime]],
        root: str | Path | None = None,
        threads: int = 1,
    ):
        self._models = {
            name: dict(sorted(versions.items(), key=lambda kv: int(kv[0])))
            for name, versions in sorted(models.items())
        }
        self.root = None if root is None else Path(root)  # where load/poll look (None: none)
        self.threads = threads
        self._unloaded: dict[tuple[str, str], str] = {}  # (name, version) -> why

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> ModelRepository:
        """Load every model version found at ``path`` (see :func:`discover`)."""
        models = {
            name: {v: ModelRuntime(p, name, v, threads=threads) for v, p in versions.items()}
            for name, versions in discover(path).items()
        }
        return cls(models, root=path, threads=threads)

    def put(self, runtime: ModelRuntime) -> None:
        """Serve ``runtime`` as its name and version (replacing a loaded copy)."""
        versions = self._models.setdefault(runtime.name, {})
        versions[runtime.version] = runtime
        self._models[runtime.name] = dict(sorted(versions.items(), key=lambda kv: int(kv[0])))
        self._unloaded.pop((runtime.name, runtime.version), None)

    def drop(self, name: str, version: str, reason: str | None = None) -> None:
        """Stop serving ``name`` version ``version``; ``reason``: why, for the repository index
        and the requests that still name it (``None``: a copy replaces it)."""
        versions = self._models.get(name, {})
        versions.pop(version, None)
        if not versions:
            self._models.pop(name, None)
        if reason is not None:
            self._unloaded[(name, version)] = reason

    def names(self) -> list[str]:
        """The names of the loaded models."""
        return list(self._models)

    def loaded(self, name: str) -> dict[str, ModelRuntime]:
        """``{version: runtime}`` of the loaded versions of ``name`` (empty when none)."""
        return dict(self._models.get(name, {}))

    def runtimes(self) -> list[ModelRuntime]:
        return [rt for versions in self._models.values() for rt in versions.values()]

    def unavailable(self) -> list[tuple[str, str, str]]:
        """``(name, version, why)`` of every unloaded version, sorted."""
        return [(name, version, why) for (name, version), why in sorted(self._unloaded.items())]

    def was_unloaded(self, name: str) -> bool:
        """Whether some version of ``name`` was unloaded."""
        return any(n == name for n, _ in self._unloaded)

    def versions(self, name: str) -> list[str]:
        return list(self._versions(name))

    def resolve(self, name: str, version: str | None = None) -> tuple[str, str]:
        """``(name, version)`` of a served model; the newest version when ``version`` is None."""
        versions = self._versions(name)
        if not version:
            return name, next(reversed(versions))
        if version not in versions:
            raise NotFound(
                f"Model {name!r} has no version {version!r}; available versions: "
                f"{', '.join(versions)}."
            )
        return name, version

    def _versions(self, name: str) -> dict[str, ModelRuntime]:
        versions = self._models.get(name)
        if versions is None and self.was_unloaded(name):
            raise NotFound(
                f"Model {name!r} is not loaded: it was {self._why(name)}; its open sequences "
                f"ended. Load it with POST /v2/repository/models/{name}/load."
            )
        if versions is None:
            raise NotFound(
                f"Unknown model {name!r}; available models: {', '.join(self._models) or 'none'}."
            )
        return versions

    def _why(self, name: str) -> str:
        return next(reason for (n, _), reason in self._unloaded.items() if n == name)
