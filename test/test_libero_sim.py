"""The LIBERO simulator through the pipe, and the scripted expert (needs `make libero`).

Skipped, with the reason, where .venv-libero is absent or libero does not import in it (CI
has none). With it: about 1 minute on 2 cores (two environment creations).
"""

import numpy as np
import pytest

from quantvla_ros.sim.client import LiberoClient, libero_available

AVAILABLE, REASON = libero_available(timeout_s=120)
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"LIBERO simulator: {REASON}")

SUITE = "libero_object"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    client = LiberoClient(log_path=tmp_path_factory.mktemp("libero") / "server.log",
                          timeout_s=300)
    yield client
    client.close()


def test_tasks_reset_and_steps_with_cameras(sim):
    assert sim.hello()["versions"]["mujoco"] == "2.3.7"
    tasks = sim.tasks(SUITE)
    assert len(tasks) == 10 and all(t["n_init_states"] == 50 for t in tasks)
    obs = sim.reset(SUITE, 0, init=0, resolution=64, settle=10)
    assert obs["agentview"].shape == obs["wrist"].shape == (64, 64, 3)
    assert obs["agentview"].dtype == np.uint8 and obs["state"].dtype == np.float32
    assert obs["state"].shape == (8,) and obs["t"] == 0 and not obs["done"]
    assert obs["instruction"] == tasks[0]["language"]
    start = obs["state"].copy()
    for _ in range(5):
        obs = sim.step([0.5, 0, 0, 0, 0, 0, -1])   # +x at half speed
    assert obs["t"] == 5 and obs["state"][0] > start[0] + 0.01
    # The fixed init state is reproducible; a fresh placement differs from it.
    again = sim.reset(SUITE, 0, init=0, resolution=64, settle=10)
    assert np.allclose(again["state"], start, atol=1e-4)
    assert np.array_equal(again["agentview"], sim.reset(SUITE, 0, init=0, resolution=64,
                                                         settle=10)["agentview"])


def test_bad_requests_are_errors_not_hangs(sim):
    from quantvla_ros.sim.client import SimRequestError

    with pytest.raises(SimRequestError, match="out of range"):
        sim.reset(SUITE, 0, init=50, resolution=0)
    with pytest.raises(SimRequestError, match="unknown LIBERO suite"):
        sim.tasks("libero_nothing")
    sim.reset(SUITE, 0, init=0, resolution=0)
    with pytest.raises(SimRequestError, match="7 finite values"):
        sim.step([np.nan] * 7)


def test_expert_solves_a_fixed_seed_fresh_placement(sim):
    obs = sim.reset(SUITE, 3, seed=12345, resolution=0, settle=10)
    for _ in range(280):
        obs = sim.step(sim.expert_action())
        if obs["done"]:
            break
    assert obs["done"] and obs["success"], f"not solved in {obs['t']} steps"
