"""DA-PTQ allocation: drift weights as the paper writes them, the knapsack, the costs."""

import copy
import itertools
import random

import pytest
import torch

from quantvla_ros.data.synthetic import synthetic_observations
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.normalization import Normalizer
from quantvla_ros.models.pi.tokenizer import ByteTokenizer
from quantvla_ros.quant.daptq_allocate import (
    Option,
    allocate,
    drift_weights,
    parse_drift,
    single_layer_errors,
    smallest_upgrade,
    weighted_error,
)
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import prepare_batches


def test_drift_weights_reproduce_the_notes_check_of_eq_12_17():
    # shared/QVLA-DAPTQ.md 2.3, all-zero actions: [1.54, 0.98, 0.49, 0.15, 0.72, 1.28, 1.84]
    w = drift_weights(torch.zeros(4, 7))
    want = torch.tensor([1.54, 0.98, 0.49, 0.15, 0.72, 1.28, 1.84])
    assert torch.allclose(w, want, atol=0.006)
    assert abs(float(w.mean()) - 1) < 1e-6
    # what the note warns about: not monotone in j, the gripper (last) weighs most
    assert int(w.argmax()) == 6 and not all(w[i] >= w[i + 1] for i in range(6))
    # and it depends on the actions' units
    assert not torch.allclose(drift_weights(torch.full((4, 7), 0.5)), w, atol=0.05)


def test_parse_drift():
    chunks = torch.zeros(2, 3, 7)
    assert torch.equal(parse_drift("uniform", chunks), torch.ones(7))
    assert torch.allclose(parse_drift("eq16", chunks), drift_weights(chunks))
    w = parse_drift("2,2,2,1,1,1,0", chunks)
    assert torch.allclose(w, torch.tensor([2, 2, 2, 1, 1, 1, 0]) / (9 / 7))
    for bad in ("1,2", "1,1,1,1,1,1,-1", "0,0,0,0,0,0,0"):
        with pytest.raises(ValueError, match="drift weights"):
            parse_drift(bad, chunks)


def test_weighted_error_by_hand():
    teacher = torch.tensor([[[1.0, 2.0, 9.0]]])  # the third dim is padding
    noise = torch.zeros(1, 1, 3)
    student = torch.tensor([[[1.5, 1.0, 0.0]]])
    w = torch.tensor([2.0, 1.0])
    # (2 * 0.25 + 1 * 1) / (2 * 1 + 1 * 4) = 1.5 / 6
    assert weighted_error(student, teacher, noise, w) == pytest.approx(0.25)
    # median over frames: one flipped frame (error 100x) does not set the cost
    t3, z3 = teacher.repeat(3, 1, 1), noise.repeat(3, 1, 1)
    s3 = student.repeat(3, 1, 1)
    s3[2, 0, 0] = 11.0  # (2 * 100 + 1) / 6 in that frame
    assert weighted_error(s3, t3, z3, w, "median") == pytest.approx(0.25)
    assert weighted_error(s3, t3, z3, w) == pytest.approx((1.5 * 2 + 201) / 18)


def _brute(options, budget):
    names = list(options)
    best = None
    for combo in itertools.product(*(options[n] for n in names)):
        b = sum(o.bytes for o in combo)
        if b > budget:
            continue
        key = (sum(o.error for o in combo), -b)
        if best is None or key < best[0]:
            best = (key, dict(zip(names, combo, strict=True)))
    return best[1]


@pytest.mark.parametrize("seed", range(6))
def test_allocate_is_the_optimum_and_spends_the_budget(seed):
    rng = random.Random(seed)
    options = {}
    for i in range(6):
        w4 = rng.randrange(20, 60) * 32
        w8 = w4 + rng.randrange(10, 40) * 32
        options[f"l{i}"] = [Option("w4a8", w4, rng.uniform(1, 5)),
                            Option("w8a8", w8, rng.uniform(0.01, 0.5)),
                            Option("bf16", w8 + rng.randrange(20, 80) * 32, 0.0)]
    floor = sum(o[0].bytes for o in options.values())
    top = sum(o[-1].bytes for o in options.values())
    budget = floor + int(rng.uniform(0.2, 0.8) * (top - floor))
    got = allocate(options, budget)
    want = _brute(options, budget)
    spent = sum(o.bytes for o in got.values())
    assert spent <= budget
    assert sum(o.error for o in got.values()) == pytest.approx(
        sum(o.error for o in want.values()), abs=1e-12)
    # spent within one upgrade's granularity: no upgrade that lowers the error still fits
    left = budget - spent
    up = smallest_upgrade(options, got)
    assert up is None or left < up or all(
        o.bytes - got[n].bytes > left for n, opts in options.items() for o in opts
        if o.error < got[n].error)
    with pytest.raises(ValueError, match="below the smallest"):
        allocate(options, floor - 1)


def test_allocate_coarse_cells_still_respect_the_budget():
    options = {f"l{i}": [Option("a", 1000 + 7 * i, 1.0), Option("b", 5003 + 13 * i, 0.1)]
               for i in range(30)}
    budget = sum(o[0].bytes for o in options.values()) + 61500  # room for upgrades: 61500
    exact = allocate(options, budget)  # the 15 cheapest upgrades: 60675 of 61500 bytes
    assert sum(o.state == "b" for o in exact.values()) == 15
    # 50 cells: units of 1230 bytes, every upgrade rounded up to 4 units, so 12 fit
    got = allocate(options, budget, cells=50)
    assert sum(o.bytes for o in got.values()) <= budget
    assert sum(o.state == "b" for o in got.values()) == 12


def test_single_layer_costs_restore_the_model_and_rank_precisions():
    model = random_model(get_config("pi05-tiny"), seed=0)
    policy = Policy(model, Normalizer.identity(), ByteTokenizer())
    cams = {c: (224, 224) for c in model.cfg.cameras}
    batches = prepare_batches(policy, synthetic_observations(2, seed=0, cameras=cams,
                                                             state_dim=8), batch_size=2)
    before = copy.deepcopy(model.state_dict())
    name = "expert.layers.0.mlp.down_proj"
    module = model.get_submodule(name)
    costs = single_layer_errors(
        model, batches, policy.family.sample,
        {name: {"w4a8": parse_bits("w4a8"), "w8a8": parse_bits("w8a8")}}, torch.ones(32))
    assert model.get_submodule(name) is module
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    c = costs[name]
    assert 0 < c["w8a8"] < c["w4a8"] / 10  # 4 more weight bits: far less action error
