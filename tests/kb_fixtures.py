"""What the knowledge-base tests (test_kb.py, test_kb_serve.py) share: they skip without the kb extra (bm25s, faiss),
and take the kb modules, the CLI and the tiny hash encoder (kb_helpers) from here."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("faiss")

sys.path.insert(0, str(Path(__file__).parent))
from kb_helpers import HashEncoder  # noqa: E402

from luban.cli import main  # noqa: E402
from luban.kb import base, cli as kb_cli  # noqa: E402
from luban.kb.config import kb_config  # noqa: E402

__all__ = ["HashEncoder", "base", "kb_cli", "kb_config", "main"]
