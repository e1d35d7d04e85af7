"""Figures keep their small print (data, seeds, commands) clear of what they plot."""

from __future__ import annotations

from sne import plots


def test_a_long_caption_stays_below_the_axis_label(tmp_path, monkeypatch):
    kept = {}
    save = plots.save_figure

    def keep(fig, path, **kwargs):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axis = fig.axes[0]
        kept["ticks"] = axis.get_tightbbox(renderer)
        kept["caption"] = fig.texts[-1].get_window_extent(renderer)
        kept["figure"] = fig.bbox
        return save(fig, path, **kwargs)

    monkeypatch.setattr(plots, "save_figure", keep)
    caption = "; ".join(f"sne bench ablation --study data-fraction --encoders e{i} --fractions 0.1,0.25" for i in range(12))
    plots.error_curves({"a": ([1, 2], [0.5, 0.4], [0.0, 0.1])}, tmp_path / "p.png", "t", "networks", "error", caption)
    assert kept["caption"].y1 < kept["ticks"].y0  # below the axis, its ticks and its label
    assert kept["caption"].y0 >= kept["figure"].y0 and kept["caption"].x1 <= kept["figure"].x1  # inside the figure
