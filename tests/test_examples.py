"""Every shipped example config and every full config in the task pages (docs/tasks/*.md) validates (a renamed
option fails here, not in a newcomer's first run); an example that names its file matches that file's model
section."""

import re
from pathlib import Path

import pytest
import yaml

from luban.config import load_config, validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TASK_PAGES = sorted((ROOT / "docs" / "tasks").glob("*.md"))


def readme_configs() -> list[tuple[str, dict]]:
    """(heading, config) for each ```yaml block that is a whole config (has task:)."""
    out = []
    for page in TASK_PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            tree = yaml.safe_load(m.group(1))
            if isinstance(tree, dict) and "task" in tree:
                before = re.sub(r"```.*?```", "", text[:m.start()], flags=re.S)  # not a comment in a code block
                heading = re.findall(r"^#{1,4} (.*)$", before, re.M)[-1]
                out.append((f"{page.name}: {heading}", tree))
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_validates(path):
    cfg = load_config(path)
    assert cfg.task and cfg.model.type


def test_readme_configs_validate_and_match_their_example_files():
    configs = readme_configs()
    assert len(configs) >= 10  # a tour of every task
    checked = 0
    for heading, tree in configs:
        cfg = validate(tree, f"docs: {heading}")
        named = re.search(r"\(`examples/([\w.]+\.yaml)`\)", heading)
        if named:
            checked += 1
            shipped = load_config(ROOT / "examples" / named.group(1))
            assert cfg.task == shipped.task and cfg.model == shipped.model, heading
    assert checked >= 10  # most task sections show their shipped config
