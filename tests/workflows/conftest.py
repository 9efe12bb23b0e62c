"""Fixtures for saga tests on real parts (see tests/support/saga.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from core.keys import RedisKeys
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import SagaStack, saga_settings, saga_stack


@pytest.fixture(scope="session")
def saga_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSim]:
    sim = BrokerSim.start(tmp_path_factory.mktemp("saga-sim") / "broker.db", seed=7)
    yield sim
    sim.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def saga_session(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    redis_client: object,
    saga_sim: BrokerSim,
) -> AsyncIterator[SagaStack]:
    # A database of its own: each test checks the whole ledger afterwards.
    async with scratch_database("saga") as database_url:
        # A Redis prefix of its own too: the stack's quote feed writes for the whole session,
        # and tests of the session's prefix (the feed's own) must not see its quotes.
        own_keys = RedisKeys(f"{redis_keys.prefix}saga:")
        settings = saga_settings(database_url, own_keys, saga_sim.url)
        async with saga_stack(temporal_env.client, settings, saga_sim) as stack:
            yield stack


@pytest_asyncio.fixture(loop_scope="session")
async def saga(saga_session: SagaStack) -> AsyncIterator[SagaStack]:
    """The session's stack with a well-behaved broker; each test leaves the ledger clean."""
    await saga_session.reset_sim()
    yield saga_session
    await saga_session.reset_sim()
    report = await saga_session.ledger_report()
    assert report.ok, report
