"""The exit criteria live in one registry (edgeexit.criteria): the bundle, the CLI, the
exporter's in-graph scores and the runtime all take it from there."""

import numpy as np
import pytest

pytest.importorskip("torch")

from edgeexit.cli.params import Criterion  # noqa: E402
from edgeexit.criteria import CRITERIA, NAMES, patience_update  # noqa: E402
from edgeexit.errors import ModelContractError  # noqa: E402
from edgeexit.export.scores import SCORES, check_criterion  # noqa: E402


def test_every_criterion_has_an_in_graph_score_and_a_cli_choice():
    assert set(SCORES) == set(NAMES)
    assert [c.value for c in Criterion] == list(NAMES)


def test_needs_come_from_the_registry():
    with pytest.raises(ModelContractError, match="needs exits\\[0\\] to return"):
        check_criterion("gate", 10, False, "exits[0]")
    with pytest.raises(ModelContractError, match="at least 2 classes"):
        check_criterion("entropy", 1, False, "exits[0]")
    with pytest.raises(ModelContractError, match="unknown criterion"):
        check_criterion("vibes", 10, False, "exits[0]")
    check_criterion("confidence", 1, False, "exits[0]")


def test_patience_and_q_exit_are_decided_in_the_runtime_and_patience_starts_at_its_rule():
    stateful = [name for name, c in CRITERIA.items() if c.runtime_state is not None]
    assert stateful == ["patience", "q-exit"]
    assert CRITERIA["q-exit"].initial_thresholds({}, 2) == (float("inf"),) * 2
    patience = CRITERIA["patience"]
    assert patience.initial_thresholds(patience.params({}), 3) == (2.0, 2.0, 2.0)
    assert CRITERIA["confidence"].initial_thresholds({}, 2) == (float("inf"),) * 2


def test_patience_counts_agreeing_exits():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    state = patience_update(None, a, None)
    state = patience_update(state, a, None)
    state = patience_update(state, a[::-1], None)
    assert state[0].tolist() == [0.0, 0.0]
    state = patience_update(patience_update(None, a, None), a, None)
    assert state[0].tolist() == [1.0, 1.0]
