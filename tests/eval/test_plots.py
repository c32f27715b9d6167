"""The sampling-vs-data plot compares like with like: both bars in the plan's unit."""

from langtune_jax.eval.plots import plan_shares, plot_sampling_vs_data


def test_token_plans_plot_token_shares_not_draw_probabilities(tmp_path):
    plan = {
        "strategy": "uniform",
        "unit": "tokens",
        "languages": [
            # qu has long examples: half the tokens takes only a third of the draws.
            {"language": "en", "share": 0.8, "target": 0.5, "probability": 0.667},
            {"language": "qu", "share": 0.2, "target": 0.5, "probability": 0.333},
        ],
    }
    assert plan_shares(plan) == {"en": (0.8, 0.5), "qu": (0.2, 0.5)}
    path = plot_sampling_vs_data(plan, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_example_plans_are_unchanged():
    plan = {"languages": [{"language": "en", "share": 0.7, "probability": 0.45}]}
    assert plan_shares(plan) == {"en": (0.7, 0.45)}
