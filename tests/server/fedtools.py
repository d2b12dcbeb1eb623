"""An in-process Grid (ServerApp messages go straight to ClientApp calls) and a tiny run config.

Each message is delivered as a copy, as over the wire: Flower's SecAgg+ workflow sends one
content object to every site and its client mod edits what it receives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict


class InProcessGrid:
    """Routes each message to ``client_app(message, context)`` of its node; keeps node contexts."""

    def __init__(self, client_app, node_configs: dict[int, dict], run_config: dict,
                 tamper: Callable[[int, Message], Message] | None = None) -> None:
        self.app, self.tamper, self.sent = client_app, tamper, []
        self.contexts = {nid: Context(run_id=1, node_id=nid, node_config=dict(cfg),
                                      state=RecordDict(), run_config=dict(run_config))
                         for nid, cfg in node_configs.items()}
        self._next = 1
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            msg.metadata.__dict__["_message_id"] = f"m{self._next}"
            self._next += 1
            reply = self.app(copy.deepcopy(msg), self.contexts[nid])
            reply.metadata.__dict__["_src_node_id"] = nid
            if self.tamper is not None:
                reply = self.tamper(nid, reply)
            self.sent.append(reply)
            replies.append(reply)
        return replies


def tiny_run_config(tmp: Path, sites: Path, **over) -> dict:
    """A fast run config: tiny Transformer, 2 rounds, DP on."""
    cfg = {"num-rounds": 2, "d-model": 16, "n-layers": 1, "n-heads": 2, "max-len": 32,
           "batch-size": 16, "local-epochs": 1, "dp": True, "epsilon": 8.0, "min-sites": 1,
           "data-dir": str(sites), "ledger-dir": str(tmp / "ledgers"),
           "checkpoint-dir": str(tmp / "ckpt"), "final-model-dir": str(tmp / "model")}
    cfg.update(over)
    return cfg
