#!/usr/bin/env bash
# The paper's section 5 experiment, made small enough for a CPU: train a 1-layer, 16-head model on the
# shared TinyStories slices and inspect its attention heads and MLP neurons.
#
# The paper's model is 1Layer-21M (hidden 1024); here hidden is 256 (16 heads of 16), context 256, so
# that a run of TIME (default 15m, then the same again with --resume) fits a shared 2-core machine.
#
#   scripts/inspect_1layer.sh [WORK_DIR] [TIME]        # WORK_DIR default /tmp/inspect_1layer
set -euo pipefail

WORK=${1:-/tmp/inspect_1layer}
TIME=${2:-15m}
S=${TINYSTORIES_SHARED_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/tinystories}
DATA=$WORK/data
RUN=$WORK/1layer

if [ ! -f "$DATA/meta.json" ]; then
  tinystories prepare "$S/TinyStories-train-head.txt" "$S/TinyStoriesV2-GPT4-train-head.txt" \
      "$S/tinystories-sample-3000.json" --val "$S/TinyStories-subset-valid.txt" \
      --tokenizer gpt-neo --vocab-size 10000 --out "$DATA"
fi
if [ ! -f "$RUN/model.safetensors" ]; then
  tinystories train --data "$DATA" --preset 1Layer-21M --set model.hidden=256 --set model.context=256 \
      --set lr=3e-3 --set warmup_steps=30 --max-time "$TIME" --out "$RUN"
fi

# The paper's paragraph: the prompt in bold, the rest generated greedily by the model.
tinystories inspect attention "$RUN" --stories 20 \
    --prompt "One day, Lucy asks Tom: \"I am looking for a banana but I can't find it\". Tom says: \"Don't worry, I will help you\". Lucy and Tom go to the park. They look for the banana together. After a while, they found the banana. Lucy is happy. She says:" \
    --max-new-tokens 40
tinystories inspect neurons "$RUN" --stories 20
echo "pages: $RUN/inspect/attention.html $RUN/inspect/neurons.html"

# README images (docs/images/): the heat maps of the text above, and two neuron pages (neuron 0, as the
# paper takes the first neurons, and the neuron with the largest activation), screenshot by headless chromium.
IMAGES=${IMAGES:-$(cd "$(dirname "$0")/.." && pwd)/docs/images}
mkdir -p "$IMAGES"
python - "$RUN/inspect" "$IMAGES" <<'PY'
import base64, json, sys
from pathlib import Path
from tinystories.inspect.html import heatmaps, neurons_page
src, images = Path(sys.argv[1]), Path(sys.argv[2])
att = json.loads((src / "attention.json").read_text())
uri = heatmaps(att["text"]["probs"], att["text"]["tokens"])[0]
(images / "inspect_attention_1layer.png").write_bytes(base64.b64decode(uri.split(",", 1)[1]))
neu = json.loads((src / "neurons.json").read_text())
for name, j in (("first", 0), ("largest", neu["largest"]["neuron"])):
    (src / f"neuron_{name}.html").write_text(neurons_page(neu, [j]), encoding="utf-8")
PY
if command -v chromium >/dev/null; then
  for name in first largest; do
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,760 \
        --screenshot="$IMAGES/inspect_neuron_$name.png" "file://$RUN/inspect/neuron_$name.html" 2>/dev/null
  done
fi
ls -l "$IMAGES"
