"""Every shipped example config and every full config in the README validates (a renamed option fails here, not in
a newcomer's first run); a README example that names its file matches that file's model section."""

import re
from pathlib import Path

import pytest
import yaml

from luban.config import load_config, validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_configs() -> list[tuple[str, dict]]:
    """(heading, config) for each ```yaml block that is a whole config (has task:)."""
    out = []
    for m in re.finditer(r"```yaml\n(.*?)```", README, re.S):
        tree = yaml.safe_load(m.group(1))
        if isinstance(tree, dict) and "task" in tree:
            heading = README[:m.start()].rsplit("\n### ", 1)[-1].split("\n", 1)[0]
            out.append((heading, tree))
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_validates(path):
    cfg = load_config(path)
    assert cfg.task and cfg.model.type


def test_readme_configs_validate_and_match_their_example_files():
    configs = readme_configs()
    assert len(configs) >= 10  # a tour of every task
    for heading, tree in configs:
        cfg = validate(tree, f"README: {heading}")
        named = re.search(r"\(`examples/([\w.]+\.yaml)`\)", heading)
        if named:
            shipped = load_config(ROOT / "examples" / named.group(1))
            assert cfg.task == shipped.task and cfg.model == shipped.model, heading
