"""The facts about tasks that more than one package needs: the task names, the ignore index.

Config, data, models, train and eval all branch on the task and mark "not a target" positions the
same way; each reads it from here. This module imports nothing from the rest of the package, so
any module may import it without a cycle.
"""

from __future__ import annotations

import typing
from typing import Literal

#: The task a run trains: the head on the model, the label layout, the loss and the metrics.
Task = Literal["sequence-classification", "token-classification", "causal-lm", "masked-lm"]

#: The task names, in the order error messages list them.
TASKS: tuple[str, ...] = typing.get_args(Task)

#: Label of a position (or, for sequence classification, a row) that no loss or metric counts:
#: padding, special tokens, sub-word continuations, unmasked tokens. -100 is the value
#: transformers and PyTorch's ``cross_entropy(ignore_index=...)`` use, so exported labels agree.
IGNORE_INDEX = -100

#: The language-model tasks: labels are the input's own token ids, scored by token NLL (loss,
#: perplexity); masked LM over the masked positions only.
LM_TASKS = frozenset({"causal-lm", "masked-lm"})
