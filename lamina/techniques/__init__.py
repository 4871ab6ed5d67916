"""Inference-time techniques: each a small class with one `run(state)`."""
from __future__ import annotations

from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.critique import Critique
from lamina.techniques.first_finish import FirstFinish
from lamina.techniques.fuse import Fuse
from lamina.techniques.generate import Generate
from lamina.techniques.program import Program
from lamina.techniques.rank import Rank
from lamina.techniques.reward import Reward
from lamina.techniques.search import Search
from lamina.techniques.unit_test import UnitTest
from lamina.techniques.verify import Verify
from lamina.techniques.vote import Vote

TECHNIQUES: dict[str, type[Technique]] = {
    cls.kind: cls for cls in (Generate, Rank, Fuse, Critique, Verify, UnitTest, Vote, Reward, FirstFinish,
                            Program, Search)
}

__all__ = ["Candidate", "State", "Technique", "TECHNIQUES", "build_technique"]


def build_technique(spec, name: str) -> Technique:
    return TECHNIQUES[spec.type](spec, name)
