
import pytest
import torch

from model.balance import V3_BIAS_FREEZE_AT, bias_update_rate, max_violation, update_router_bias
from model.dispatch import DenseDispatcher, LocalSortedDispatcher
from model.moe import MoE, drop_over_device_budget, keep_within_budget, never_drop_sequences
from model.router import Router, sequence_balance_loss

from .conftest import micro_config, micro_model

pytestmark = pytest.mark.usefixtures("single_thread")

SCORES = [0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.95, 0.15]   # groups: 1.0, 1.5, 0.5, 1.1


def router_with_scores(scores, **cfg):
    """A router whose affinities for the input e_0 are exactly ``scores``."""
    config = micro_config(n_routed_experts=len(scores), **cfg)
    r = Router(config)
    with torch.no_grad():
        r.weight.zero_()
        s = torch.tensor(scores, dtype=torch.float64)
        r.weight[:, 0] = torch.log(s / (1 - s)).float()
    x = torch.zeros(1, config.hidden_size)
    x[0, 0] = 1.0
    return r, x


def test_group_limited_topk_and_gates_by_hand():
    r, x = router_with_scores(SCORES, n_group=4, topk_group=2, num_experts_per_tok=2)
    out = r(x)
    # groups 1 {2,3} and 3 {6,7} win; expert 0 (0.9, 2nd best overall) sits in a losing group
    assert sorted(out.expert_ids[0].tolist()) == [2, 6]
    gates = dict(zip(out.expert_ids[0].tolist(), out.gates[0].tolist(), strict=True))
    assert gates[6] == pytest.approx(0.95 / 1.75 * 2.5, rel=1e-5)
    assert gates[2] == pytest.approx(0.8 / 1.75 * 2.5, rel=1e-5)
    # without group limiting the plain top-2 is {6, 0}
    r1, _ = router_with_scores(SCORES, n_group=1, topk_group=1, num_experts_per_tok=2)
    r1.load_state_dict(r.state_dict())
    assert sorted(r1(x).expert_ids[0].tolist()) == [0, 6]


def test_bias_steers_selection_but_not_gates():
    r, x = router_with_scores(SCORES, n_group=4, topk_group=2, num_experts_per_tok=2)
    r.e_score_correction_bias[3] = 0.2          # 0.7 + 0.2 beats expert 2's 0.8
    out = r(x)
    gates = dict(zip(out.expert_ids[0].tolist(), out.gates[0].tolist(), strict=True))
    assert sorted(gates) == [3, 6]
    assert gates[3] == pytest.approx(0.7 / 1.65 * 2.5, rel=1e-5)   # unbiased affinity
    r2, _ = router_with_scores(SCORES, n_group=4, topk_group=2, num_experts_per_tok=2, norm_topk_prob=False)
    assert sorted(r2(x).gates[0].tolist()) == pytest.approx([0.8 * 2.5, 0.95 * 2.5], rel=1e-5)


def test_sequence_balance_loss_by_hand():
    scores = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.2, 0.4]]])   # B=1, T=2, E=4
    ids = torch.tensor([[[0], [3]]])                                       # K=1
    # f = E/(K·T)·count = 2·[1, 0, 0, 1];  P = mean_t s/Σs = [0.35, 0.35, 0.1, 0.2]
    assert sequence_balance_loss(scores, ids, 1).item() == pytest.approx(2 * 0.35 + 2 * 0.2)
    uniform = torch.full((1, 4, 4), 0.5)
    assert sequence_balance_loss(uniform, torch.arange(4).view(1, 4, 1), 1).item() == pytest.approx(1.0)


def test_router_is_fp32_inside_bf16_autocast():
    """The trainer's BF16 autocast must not re-cast the gate: training would pick other experts
    than serving. The naive gate matmul under autocast changes ~38 % of token expert sets here."""
    torch.manual_seed(0)
    cfg = micro_config(hidden_size=256, n_routed_experts=64, num_experts_per_tok=8, n_group=8, topk_group=4)
    router = Router(cfg)
    router.reset_parameters(std=0.006)   # V3's init: affinities close together, easily reordered
    x = torch.randn(4096, 256)

    def expert_sets(routing):
        return routing.expert_ids.sort(dim=-1).values

    outside = router(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = router(x)
        naive = torch.nn.functional.linear(x, router.weight).sigmoid()   # what autocast does to a plain gate
        balance = sequence_balance_loss(inside.scores.view(8, 512, 64), inside.expert_ids.view(8, 512, 8), 8)
    assert inside.scores.dtype == inside.gates.dtype == balance.dtype == torch.float32
    assert (expert_sets(inside) != expert_sets(outside)).any(-1).sum().item() == 0
    assert torch.equal(inside.gates, outside.gates)
    naive_ids = (naive + router.e_score_correction_bias).float()
    naive_ids = router._mask_to_best_groups(naive_ids).topk(8, dim=-1).indices.sort(dim=-1).values
    assert (naive_ids != expert_sets(outside)).any(-1).float().mean() > 0.05   # the check can fail


def make_moe(**cfg) -> MoE:
    torch.manual_seed(0)
    moe = MoE(micro_config(**cfg))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return moe


def test_sorted_dispatch_equals_dense_and_computes_only_selected_experts():
    moe = make_moe(n_routed_experts=16, num_experts_per_tok=2, n_group=1, topk_group=1)
    x = torch.randn(1, 3, moe.gate.weight.shape[1], requires_grad=True)
    y_sorted, stats = moe(x)
    moe.dispatcher = DenseDispatcher()
    y_dense, _ = moe(x)
    assert torch.allclose(y_sorted, y_dense, atol=1e-5)
    moe.dispatcher = LocalSortedDispatcher()
    moe.zero_grad()
    y_sorted.square().sum().backward()
    used = set(moe.gate(x.detach().view(-1, x.shape[-1])).expert_ids.flatten().tolist())
    assert len(used) <= 6 < 16
    for e, expert in moe.experts.items():
        assert (expert.up_proj.weight.grad is not None) == (int(e) in used)
    assert stats.expert_load.sum() == 3 * 2
    assert stats.expert_load.tolist() == torch.bincount(
        torch.tensor(sorted(moe.gate(x.detach().view(-1, x.shape[-1])).expert_ids.flatten().tolist())),
        minlength=16).float().tolist()


def test_device_budget_keeps_protected_then_highest_affinity():
    aff = torch.tensor([0.9, 0.5, 0.2, 0.6, 0.7, 0.4, 0.3, 0.8])
    protected = torch.tensor([False, False, True, False, False, False, False, False])
    # budget 3: the protected 0.2, then 0.9 and 0.8
    assert keep_within_budget(aff, protected, 3).nonzero().flatten().tolist() == [0, 2, 7]
    # protected ones are kept even past the budget
    assert keep_within_budget(aff, torch.ones(8, dtype=torch.bool), 2).all()
    assert keep_within_budget(aff, torch.zeros(8, dtype=torch.bool), 0).sum() == 0


def test_one_device_holds_the_average_so_drops_only_below_cf_1():
    """V2's budget is per device: ceil(cf · A / devices). Alone, a device holds exactly A."""
    ids = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])       # expert 0 chosen 4 times of 8
    aff = torch.tensor([[0.9, 0.5], [0.2, 0.6], [0.7, 0.4], [0.3, 0.8]])
    none = torch.zeros(4, 2, dtype=torch.bool)
    kept, dropped = drop_over_device_budget(ids, aff, none, 1.0, 4)
    assert torch.equal(kept, ids) and dropped.item() == 0     # a per-expert cap of 2 would drop 2
    kept, dropped = drop_over_device_budget(ids, aff, none, 0.5, 4)   # budget 4 of 8
    assert kept.tolist() == [[0, -1], [-1, 2], [0, -1], [-1, 0]] and dropped.item() == 4
    protect_row_1 = none.clone()
    protect_row_1[1] = True
    kept, _ = drop_over_device_budget(ids, aff, protect_row_1, 0.5, 4)
    assert kept.tolist() == [[0, -1], [0, 2], [-1, -1], [-1, 0]]


def test_never_drop_sequences_share():
    assert never_drop_sequences(10, 0.1).tolist() == [True] + [False] * 9
    assert never_drop_sequences(40, 0.1).sum() == 4 and never_drop_sequences(40, 0.1).nonzero().flatten().tolist() == [
        0, 10, 20, 30]
    assert never_drop_sequences(4, 0.1).sum() == 0 and never_drop_sequences(8, 0.0).sum() == 0
    assert never_drop_sequences(3, 1.0).all()


def test_moe_drops_only_in_training_and_never_from_exempt_sequences():
    moe = make_moe(expert_capacity_factor=0.5, never_drop_share=0.25, n_routed_experts=8, num_experts_per_tok=2,
                   n_shared_experts=0)
    x = torch.randn(4, 16, moe.gate.weight.shape[1])
    moe.train()
    y, stats = moe(x)
    assert stats.dropped.item() == 4 * 16 * 2 // 2                 # budget ceil(0.5 · 128) = 64 of 128
    routing = moe.gate(x.view(-1, x.shape[-1]))
    kept, _ = moe.drop_tokens(routing, 4)
    kept = kept.view(4, 16, 2)
    assert (kept[0] >= 0).all()                                     # sequence 0 of 4 is exempt (share 1/4)
    assert (kept[1:] < 0).any()
    # with an explicit mask: sequence 2 exempt instead
    kept2, _ = moe.drop_tokens(routing, 4, torch.tensor([False, False, True, False]))
    assert (kept2.view(4, 16, 2)[2] >= 0).all() and (kept2.view(4, 16, 2)[0] < 0).any()
    # dropped assignments contribute nothing: rebuild y from the kept ones with the dense dispatcher
    dense = DenseDispatcher()(x.view(-1, x.shape[-1]), kept.view(-1, 2), routing.gates, moe.experts, 8)
    torch.testing.assert_close(y.view(-1, x.shape[-1]), dense, rtol=1e-5, atol=1e-6)
    moe.eval()
    y_eval, stats_eval = moe(x)
    assert stats_eval.dropped.item() == 0 and not torch.allclose(y, y_eval)


def test_custom_dispatcher_plugs_in_and_missing_expert_is_clear():
    model = micro_model()
    calls = []

    class Recording(LocalSortedDispatcher):
        def __call__(self, x, expert_ids, gates, experts, n_experts):
            calls.append((x.shape[0], n_experts, sorted(experts.keys(), key=int)[:2]))
            return super().__call__(x, expert_ids, gates, experts, n_experts)

    ids = torch.randint(0, 256, (2, 9))
    base = model(ids).logits
    model.set_expert_dispatcher(Recording())
    assert torch.allclose(model(ids).logits, base, atol=1e-6)
    assert len(calls) == 2 and calls[0] == (18, 8, ["0", "1"])
    moe = model.moe_layers()[1]
    moe.retain_experts([0, 1])
    assert sorted(moe.experts.keys()) == ["0", "1"]
    assert "model.layers" not in str(list(moe.state_dict())) and "experts.1.up_proj.weight" in moe.state_dict()
    with pytest.raises(KeyError, match="holds only experts"):
        model(ids)


def test_bias_update_balances_a_skewed_router():
    """Aux-loss-free balancing: tokens prefer 2 of 16 experts; updating b_i by γ·sign(mean − load)
    after each batch drives MaxVio down."""
    torch.manual_seed(0)
    cfg = micro_config(n_routed_experts=16, num_experts_per_tok=2, n_group=4, topk_group=2)
    router = Router(cfg)
    D = cfg.hidden_size
    with torch.no_grad():
        router.weight.normal_(std=0.1)
        direction = torch.randn(D)
        router.weight[:2] += direction / direction.norm()   # experts 0, 1 favoured by the drift
    vio = []
    for _ in range(300):
        x = torch.randn(4096, D) * 0.3 + 2 * direction / direction.norm()
        load = torch.bincount(router(x).expert_ids.flatten(), minlength=16).float()
        vio.append(max_violation(load).item())
        update_router_bias(router.e_score_correction_bias, load, rate=3e-3)
    assert vio[0] > 5.0                      # nearly every token picks experts 0 and 1 (MaxVio 7)
    assert sum(vio[-20:]) / 20 < 0.25        # balanced to within sampling noise
    assert router.e_score_correction_bias[:2].max() < router.e_score_correction_bias[2:].min()


def test_model_update_router_biases_uses_loads_rows():
    model = micro_model()
    out = model(torch.randint(0, 256, (2, 12)))
    assert out.expert_load.shape == (len(model.moe_layer_ids), 8) == (3, 8)   # layers 1, 2 and MTP 3
    assert out.expert_load[-1].sum() == 0           # MTP did not run without labels
    assert out.expert_load[0].sum() == 2 * 12 * 2
    metrics = model.update_router_biases(out.expert_load, rate=0.01)
    assert set(metrics) >= {"moe/maxvio", "moe/maxvio_max", "moe/maxvio/layer_1", "moe/maxvio/layer_2"}
    assert metrics["moe/maxvio/layer_1"] == pytest.approx(max_violation(out.expert_load[0]).item())
    layers = model.moe_layers()
    load = out.expert_load[0]
    assert torch.allclose(layers[1].gate.e_score_correction_bias, 0.01 * torch.sign(load.mean() - load))
    assert torch.count_nonzero(layers[3].gate.e_score_correction_bias) == 0
    with pytest.raises(ValueError, match="expected"):
        model.update_router_biases(torch.zeros(2, 8))


def test_bias_update_rate_freezes_for_the_last_stretch():
    # V3: 14.8T tokens, γ = 1e-3 until 14.3T, then 0. In 1000 steps: steps 0..966 (966.2 = 14.3/14.8·1000).
    rates = [bias_update_rate(1e-3, s, 1000, V3_BIAS_FREEZE_AT) for s in range(1000)]
    assert rates[:967] == [1e-3] * 967 and rates[967:] == [0.0] * 33
    assert 1000 * (1 - V3_BIAS_FREEZE_AT) == pytest.approx(1000 * 0.5 / 14.8)
    assert {bias_update_rate(1e-3, s, 10) for s in range(10)} == {1e-3}   # default: never frozen
    assert bias_update_rate(1e-3, 0, 10, freeze_at=0.0) == 0.0
    with pytest.raises(ValueError, match="freeze_at"):
        bias_update_rate(1e-3, 0, 10, freeze_at=1.5)
