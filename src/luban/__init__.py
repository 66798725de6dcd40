"""luban: one YAML config from data to an evaluated, reusable model.

Public API (imports are lazy so `luban --help` stays fast):

    import luban
    run_dir = luban.train("examples/demo_zh_sentiment.yaml")
    predictor = luban.load(run_dir)
    predictor.predict(["服务很好"])
"""

from luban.version import __version__  # the one version string (pyproject.toml reads luban/version.py)

__all__ = ["train", "load", "Predictor", "LubanError", "__version__"]


def __getattr__(name):
    if name == "train":
        from luban.pipeline import train

        return train
    if name in ("load", "Predictor"):
        from luban.predictor import Predictor, load

        return load if name == "load" else Predictor
    if name == "LubanError":
        from luban.errors import LubanError

        return LubanError
    raise AttributeError(f"module 'luban' has no attribute {name!r}")
