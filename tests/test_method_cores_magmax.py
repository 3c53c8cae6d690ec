"""MagMax's core: the max-magnitude merge, and which weights train and which are evaluated."""

from types import SimpleNamespace

import torch

from clipbench.methods.magmax import MagMax, max_magnitude_merge
from clipbench.methods.toolkit import load_into, snapshot
from test_method_cores import streams, tiny_model  # noqa: F401  (fixture and helper)


def test_pinned_magmax():
    tvs = [{"w": torch.tensor([1.0, -3.0, 2.0, 0.5, -1.0])},
           {"w": torch.tensor([-2.0, 1.0, -2.0, 0.0, 1.0])},
           {"w": torch.tensor([0.5, 0.5, 1.0, -0.5, 0.0])}]
    # element 0: -2 (largest, negative sign kept); 1: -3; 2: |2| = |-2|, the later -2 wins the tie;
    # 3: |0.5| = |-0.5|, the later -0.5; 4: |-1| = |1|, the later 1
    assert max_magnitude_merge(tvs)["w"].tolist() == [-2.0, -3.0, -2.0, -0.5, 1.0]
    assert max_magnitude_merge(tvs[:1])["w"].tolist() == tvs[0]["w"].tolist()


def test_merge_equals_the_last_argmax_of_magnitudes():
    g = torch.Generator().manual_seed(0)
    tvs = [{"a": torch.randint(-3, 4, (6, 5), generator=g).float(), "b": torch.randn(7, generator=g)} for _ in range(4)]
    merged = max_magnitude_merge(tvs)
    for key in ("a", "b"):
        stacked = torch.stack([tv[key] for tv in tvs])
        # the last task among those of largest |value| (ties to the later one, as `>=` does)
        last = len(tvs) - 1 - stacked.abs().flip(0).argmax(0)
        assert torch.equal(merged[key], stacked.gather(0, last.unsqueeze(0)).squeeze(0))


def test_evaluates_theta0_plus_lambda_merged_and_trains_from_sequential_weights(streams):
    model = tiny_model(streams)
    method = MagMax(MagMax.Config(scaling=0.5))
    method.setup(model, streams)
    theta0 = {k: v.clone() for k, v in method.pretrained.items()}
    assert theta0 and all(k.startswith("clip.visual.") for k in theta0)  # image encoder only, text frozen
    text_before = {n: p.clone() for n, p in model.named_parameters() if n.startswith("clip.transformer.")}
    strategy = SimpleNamespace(model=model)
    g = torch.Generator().manual_seed(1)
    tau1 = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in theta0.items()}
    tau2 = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in theta0.items()}

    method.before_training_exp(strategy)  # first experience: starts from theta_0
    assert all(torch.equal(v, theta0[k]) for k, v in snapshot(model, method.trainable_parameters(model)).items())
    load_into(model, {k: theta0[k] + tau1[k] for k in theta0})  # "training" reaches theta_1
    method.after_training_exp(strategy)
    evaluated = snapshot(model, method.trainable_parameters(model))
    for k in theta0:
        torch.testing.assert_close(evaluated[k], theta0[k] + 0.5 * tau1[k])

    method.before_training_exp(strategy)  # the next experience trains from theta_1, not the merged model
    for k, v in snapshot(model, method.trainable_parameters(model)).items():
        torch.testing.assert_close(v, theta0[k] + tau1[k])
    load_into(model, {k: theta0[k] + tau1[k] + tau2[k] for k in theta0})  # theta_2 = theta_1 + a step
    method.after_training_exp(strategy)
    merged = max_magnitude_merge([tau1, {k: tau1[k] + tau2[k] for k in theta0}])  # task vectors from theta_0
    evaluated = snapshot(model, method.trainable_parameters(model))
    for k in theta0:
        torch.testing.assert_close(evaluated[k], theta0[k] + 0.5 * merged[k])
    assert all(torch.equal(p, text_before[n]) for n, p in model.named_parameters() if n in text_before)

    # a resumed run: fresh model and method, the checkpointed model and method state
    resumed_model = tiny_model(streams)
    resumed = MagMax(MagMax.Config(scaling=0.5))
    resumed.setup(resumed_model, streams)
    resumed_model.load_checkpoint_state(model.checkpoint_state())
    resumed.load_state_dict(method.state_dict())
    resumed.before_training_exp(SimpleNamespace(model=resumed_model))
    for k, v in snapshot(resumed_model, resumed.trainable_parameters(resumed_model)).items():
        torch.testing.assert_close(v, theta0[k] + tau1[k] + tau2[k])
