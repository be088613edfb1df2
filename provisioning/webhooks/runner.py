"""The webhooks' thread in the sweeper process: fan-out, then sending, round after round.

Beside the event relay rather than in Celery: a delivery is a row that waits for its time, so it
needs a loop that looks at the rows, not a queue; the sweeper process is the one process every
deployment runs once. Two runners (a second sweeper) would be safe all the same: the fan-out and
the sender take rows with SKIP LOCKED.
"""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from provisioning.platform.rounds import run_rounds
from provisioning.platform.settings import Settings
from provisioning.webhooks.fanout import BATCH_SIZE as FAN_OUT_BATCH
from provisioning.webhooks.fanout import fan_out
from provisioning.webhooks.sender import WebhookSender

# How often an idle runner looks for new events and due deliveries: the least a webhook waits.
IDLE_SECONDS = 0.25


class WebhookRunner:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.sessions = sessions
        self.sender = WebhookSender(settings, sessions)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> tuple[int, int]:
        """One round: the events fanned out and the deliveries sent."""
        with self.sessions() as session:
            fanned_out = fan_out(session.connection())
            session.commit()
        return fanned_out, self.sender.send_due()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the round under way (its posts time out in WEBHOOK_TIMEOUT_SECONDS at most)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.sender.close()

    def _run(self) -> None:
        run_rounds(self._busy_round, self._stopped, IDLE_SECONDS, "webhooks: fanning out and sending")

    def _busy_round(self) -> bool:
        """A round; whether it was full (more may be waiting at once)."""
        fanned_out, sent = self.run_once()
        return fanned_out >= FAN_OUT_BATCH or sent >= self.sender.threads
