"""Self-contained HTML pages for both verbs: inline CSS and JS, PNGs as data URIs, no network.

Each page embeds its JSON verbatim (`<script type="application/json" id="data">`), and every number
it shows is printed from that same JSON, so the page and the .json file cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import json

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f0f0f0}td.l{text-align:left}tr.positional td{background:#eef5ff}
.tok{white-space:pre-wrap;border-radius:2px;cursor:default}#text{line-height:1.6}.prompt{font-weight:bold}
.sel{outline:2px solid #06c}#readout{font-family:monospace;font-size:13px;min-height:3em}
.sent{margin:2px 0;font-size:14px}.act{color:#888;font-size:12px;font-family:monospace}
.hit{background:#f66;color:#000}h3{margin-bottom:4px}.muted{color:#666}img{max-width:100%}
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def embed_json(data) -> str:
    # "</" would end the <script> element early; "<\/" is the same JSON string.
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")


def page(title: str, body: str, data, script: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}\n"
            f"<script type=\"application/json\" id=\"data\">{embed_json(data)}</script>\n"
            f"<script>{script}</script>\n</body></html>\n")


def png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmaps(probs, tokens: list[str]) -> list[str]:
    """One PNG per layer: each head's attention (rows: queries, columns: keys) as a heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    uris = []
    T = len(tokens)
    for L, layer in enumerate(probs):
        H = len(layer)
        cols = min(4, H)
        rows = (H + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            ax.set_xticks([])
            ax.set_yticks([])
            if h >= H:
                ax.axis("off")
                continue
            m = np.zeros((T, T))
            for q, row in enumerate(layer[h]):
                m[q, :len(row)] = row
            ax.imshow(m, cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {L} head {h}", fontsize=9)
        fig.tight_layout()
        uris.append(png_uri(fig))
        plt.close(fig)
    return uris


def head_table_html(table: dict) -> str:
    cols = ("layer", "head", "label_text", "mean_distance", "entropy", "offset", "offset_share", "position",
            "position_share")
    head = "".join(f"<th>{esc(c)}</th>" for c in cols) + "<th>most attended tokens (mass, lift)</th>"
    rows = []
    for r in table["heads"]:
        cells = "".join(f"<td class=\"l\">{esc(r[c])}</td>" if c == "label_text" else f"<td>{esc(r[c])}</td>"
                        for c in cols)
        toks = ", ".join(f"<code>{esc(t['token'])}</code> ({esc(t['mass'])}, {esc(t['lift'])})"
                         for t in r["top_tokens"])
        rows.append(f"<tr class=\"{esc(r['label'])}\">{cells}<td class=\"l\">{toks}</td></tr>")
    return f"<table id=\"heads\"><tr>{head}</tr>\n" + "\n".join(rows) + "</table>"


ATTENTION_JS = """
const D = JSON.parse(document.getElementById('data').textContent);
const P = D.text.probs, toks = document.querySelectorAll('#text .tok'), sel = document.getElementById('head');
let cur = -1;
function show(q) {
  const [L, h] = sel.value.split('.').map(Number), row = P[L][h][q];
  const mx = Math.max(...row);
  toks.forEach((t, j) => {
    t.classList.toggle('sel', j === q);
    const w = j <= q ? row[j] : 0;
    t.style.background = w > 0 ? `rgba(220,0,0,${(0.85 * w / mx).toFixed(3)})` : '';
    t.title = j <= q ? `weight ${row[j]}` : '';
  });
  const best = row.map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  document.getElementById('readout').textContent = `layer ${L} head ${h}: ` + JSON.stringify(D.text.tokens[q]) +
    ' attends to ' + best.map(([w, j]) => `${JSON.stringify(D.text.tokens[j])}@${j} ${w}`).join(', ');
  cur = q;
}
toks.forEach((t, q) => t.addEventListener('mouseenter', () => show(q)));
sel.addEventListener('change', () => { if (cur >= 0) show(cur); });
if (toks.length) show(toks.length - 1);  // until the pointer moves: where the last token attends
"""


def attention_page(data: dict, images: list[str]) -> str:
    text, table = data["text"], data["table"]
    spans = "".join(f"<span class=\"tok{' prompt' if i < text['prompt_tokens'] else ''}\">{esc(t)}</span>"
                    for i, t in enumerate(text["tokens"]))
    options = "".join(f"<option value=\"{L}.{h}\">layer {L} head {h}</option>"
                      for L in range(len(text["probs"])) for h in range(len(text["probs"][L])))
    summary = data["summary"]
    body = (f"<h1>Attention: {esc(data['model'])}</h1>"
            f"<p class=\"muted\">{esc(data['model_shape'])}</p>"
            f"<h2>Where each token attends</h2><p>Head <select id=\"head\">{options}</select> "
            f"Hover a token: the tokens it attends to turn red (bold: the prompt).</p>"
            f"<div id=\"text\">{spans}</div><p id=\"readout\"></p>"
            + "".join(f"<h3>Layer {L}</h3><img alt=\"attention heat maps, layer {L}\" src=\"{u}\">"
                      for L, u in enumerate(images))
            + f"<h2>Heads over {esc(table['stories'])} held-out stories ({esc(table['tokens'])} tokens)</h2>"
            f"<p>Source: {esc(data['source'])}. {esc(summary['positional'])} positional heads (offsets "
            f"{esc(summary['offsets'])}), {esc(summary['semantic'])} semantic. Rule: positional when at least "
            f"{esc(table['positional_share'])} of a head's attention goes to one relative offset (or one "
            f"position); semantic otherwise. Lift: a token's share of the head's attention over its share of "
            f"the tokens.</p>" + head_table_html(table))
    return page(f"attention: {data['model']}", body, data, ATTENTION_JS)


def neuron_section(n: dict, layer: int) -> str:
    top = n["top"]
    mx = max((e["activation"] for e in top), default=1.0) or 1.0
    lines = []
    for e in top:
        parts = []
        for i, t in enumerate(e["sentence"]):
            t = t.replace("\n", "\u23ce")  # a line break, visible
            if i == e["at"]:
                alpha = max(0.15, min(1.0, e["activation"] / mx)) if mx > 0 else 1.0
                parts.append(f"<span class=\"hit\" style=\"background:rgba(255,60,60,{alpha:.2f})\">{esc(t)}</span>")
            else:
                parts.append(esc(t))
        lines.append(f"<div class=\"sent\"><span class=\"act\">{esc(e['activation'])} {esc(e['category'])}</span> "
                     f"{''.join(parts)}</div>")
    cats = ", ".join(f"{esc(c)} {esc(v)}" for c, v in n["categories"].items())
    return (f"<section class=\"neuron\" id=\"n{n['neuron']}\"><h3>Layer {layer}, neuron {n['neuron']}</h3>"
            f"<p>role <b>{esc(n['role'])}</b>, purity <b>{esc(n['purity'])}</b>; top-{len(top)} categories: "
            f"{cats}</p>" + "\n".join(lines) + "</section>")


def neurons_page(data: dict, show: list[int]) -> str:
    pur, layer = data["purity"], data["layer"]
    roles = ", ".join(f"{esc(c)} {esc(v)}" for c, v in data["roles"].items())
    rows = "\n".join(f"<tr><td>{n['neuron']}</td><td>{esc(n['max'])}</td><td class=\"l\">{esc(n['role'])}</td>"
                     f"<td>{esc(n['purity'])}</td></tr>" for n in data["neurons"])
    by_id = {n["neuron"]: n for n in data["neurons"]}
    body = (f"<h1>Neurons: {esc(data['model'])}, layer {layer}</h1>"
            f"<p class=\"muted\">{esc(data['model_shape'])}. {esc(data['stories'])} stories, "
            f"{esc(data['tokens'])} tokens from {esc(data['source'])}; top {esc(data['k'])} tokens per neuron.</p>"
            f"<h2>Roles</h2><table id=\"summary\"><tr><th>mean purity</th><th>control mean</th>"
            f"<th>control 95th percentile</th><th>share of neurons above it</th><th>largest activation</th></tr>"
            f"<tr><td>{esc(pur['mean'])}</td><td>{esc(pur['control_mean'])}</td><td>{esc(pur['control_q95'])}</td>"
            f"<td>{esc(pur['above_control_q95'])}</td><td>neuron {esc(data['largest']['neuron'])}: "
            f"{esc(data['largest']['activation'])}</td></tr></table>"
            f"<p>Purity: the share of a neuron's top tokens in its most common category. Control: the same "
            f"for k tokens drawn at random from all the tokens read (shuffled activations). Neurons by role: "
            f"{roles}.</p>"
            + "".join(neuron_section(by_id[j], layer) for j in show)
            + f"<h2>All neurons of layer {layer}</h2><table id=\"neurons\"><tr><th>neuron</th><th>max</th>"
              f"<th>role</th><th>purity</th></tr>\n{rows}</table>")
    return page(f"neurons: {data['model']} layer {layer}", body, data)
