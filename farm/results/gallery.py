"""A static HTML gallery of a batch: each image with its parameters. Pure: rows in, HTML out."""

from __future__ import annotations

import html


def output_name(index: int, seed: int, key: str | None = None) -> str:
    """The file name a batch's image gets when it is fetched (``00003-1234.png``: index, seed),
    with its stored key's extension (a clip's ``.webp`` or ``.mp4``, issue 27)."""
    ext = key.rsplit(".", 1)[-1] if key and "." in key.rsplit("/", 1)[-1] else "png"
    return f"{index:05d}-{seed}.{ext}"


def media_html(filename: str, alt: str) -> str:
    """How a result shows in the page: an image (an animated WebP plays as one), or an MP4 clip
    in a looping, muted video element that plays on its own, as an animated image would."""
    src = html.escape(filename)
    if filename.endswith(".mp4"):
        return (f'<video src="{src}" autoplay loop muted playsinline controls '
                f'aria-label="{html.escape(alt)}"></video>')
    return f'<img src="{src}" loading="lazy" alt="{html.escape(alt)}">'


def gallery_html(batch: str, items: list[tuple[str, dict]]) -> str:
    """``items``: (image file name relative to the page, job row from the ledger)."""
    cards = []
    for filename, job in items:
        adapters = ", ".join(f"{a['name']} {a['weight']:g}" for a in job.get("adapters") or []) or "none"
        axes = ", ".join(f"{k}={v}" for k, v in (job.get("axes") or {}).items())
        facts = [
            ("seed", job["seed"]), ("steps", job["steps"]), ("guidance", f"{job['guidance']:g}"),
            ("size", f"{job['width']}x{job['height']}"), ("model", job["model"]), ("recipe", job["recipe"]),
            ("scheduler", job.get("scheduler") or "model default"), ("LoRAs", adapters),
        ]
        if axes:
            facts.append(("axes", axes))
        if job.get("negative_prompt"):
            facts.append(("negative", job["negative_prompt"]))
        if job.get("reused_from"):
            facts.append(("reused from job", job["reused_from"]))
        if job.get("clip"):  # issue 27
            clip = job["clip"]
            facts.append(("clip", f"{clip['frames']} frames at {clip['fps']} fps, {clip['format']}"))
            facts.append(("motion", clip["motion"]))
        sources = ""
        if job.get("kind") not in (None, "txt2img", "clip"):  # issue 13: what it started from, beside it
            facts.append(("kind", job["kind"]))
            facts += [(name, job[name]) for name in ("strength", "denoise_steps", "mask_blur", "upscale", "controlnet",
                                                     "control_scale", "control_preprocess")
                      if job.get(name) not in (None, 0)]
            sources = "".join(
                f'<a href="inputs/{job[name]}.png"><img class="source" src="inputs/{job[name]}.png" '
                f'alt="{label}" title="{label} {job[name][:12]}"></a>'
                for name, label in (("init_image", "source"), ("mask_image", "mask"), ("control_image", "control"))
                if job.get(name))
            sources = f'<div class="sources">{sources}</div>'

        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
        cards.append(
            f'<figure><a href="{html.escape(filename)}">{media_html(filename, job["prompt"])}</a>{sources}'
            f'<figcaption><p>{html.escape(job["prompt"])}</p>'
            f"<table>{rows}</table></figcaption></figure>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>batch {html.escape(batch)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; background: white; padding: .5rem; border: 1px solid #ddd; }}
img, video {{ width: 100%; image-rendering: pixelated; }}
.sources {{ display: flex; gap: .25rem; }} .sources a {{ width: 30%; }} .source {{ border: 1px solid #888; }}
table {{ font-size: .75rem; border-collapse: collapse; }} th {{ text-align: left; padding-right: .5rem; color: #555; }}
</style></head>
<body><h1>batch {html.escape(batch)}</h1><p>{len(items)} images</p>
<main>{''.join(cards)}</main></body></html>
"""
