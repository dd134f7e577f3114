#!/usr/bin/env bash
# The GPU figures docs/benchmarks.md owes (its "Owed" sections), as one prepared script, so that a
# short lease of one GPU measures them instead of being spent composing commands. Three parts,
# in order of what is owed most; the time limits of each part's commands add up to at most
# 390 s, and a slow or failing command costs its own limit and no more:
#
#   bash benchmarks/gpu_figures.sh 1 [LOG_DIR]   # the COCO-scale training step, the loss alone
#   bash benchmarks/gpu_figures.sh 2 [LOG_DIR]   # teacher step, inference, host syncs, kernels,
#                                                # the loss matrix
#   bash benchmarks/gpu_figures.sh 3 [LOG_DIR]   # NMS, model configs, DCN/BoxInst, export
#
# Each part appends to LOG_DIR/part<N>.log (default LOG_DIR: output/gpu_figures) the machine,
# then per command its line, its output and its exit status. Run from the repository root, with
# the package importable (installed, or found through PYTHONPATH as set here).
set -u
part=${1:-}
if [[ $part != [123] ]]; then
    echo "usage: gpu_figures.sh 1|2|3 [LOG_DIR] (the part to run, not '$part')" >&2
    exit 2
fi
logs=${2:-output/gpu_figures}
log="$logs/part$part.log"
mkdir -p "$logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

run() {  # run NAME LIMIT_S COMMAND...: one figure, its output and exit status into the log
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S) UTC, limit ${limit}s): $*" >>"$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "=== $name: exit status $? at $(date -u +%H:%M:%S) UTC" >>"$log"
}

{
    echo "=== machine ($(date -u +%FT%TZ))"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    git log -1 --format='commit %H' 2>/dev/null
} >>"$log" 2>&1

step="python benchmarks/bench_condinst_step.py"
case $part in
1)
    # Owed item 1: the COCO-scale R-50 step with each loss network and precision, one process
    # per loss network (`none` beside it, for the ratios), so a command cut at its limit loses
    # only its own rows.
    for variants in "1,1,1,1,1 1,1,1,1,1@500" vgg16 vgg19 vgg19@32 "vgg19+cl vgg19+cl+bf16net"; do
        # shellcheck disable=SC2086  # the variants are separate words
        run "step-${variants// /-}" 50 $step step --device cuda --coco --variants none $variants \
            --precisions fp32 bf16 --chunk-size 64 --repeats 10
    done
    # Item 3: the loss alone at the paper setting, beside the bf16 matmul peak.
    for structure in vgg19 1,1,1,1,1 vgg16; do
        run "loss-$structure" 30 $step loss --device cuda --variants "$structure" \
            --instances 500 --objects 30 --mask-size 200 336 --chunk-size 64 \
            --reference-chunk-size 64 --matmul-size 8192 --repeats 10
    done
    ;;
2)
    # Item 1's teacher target: the step with the teacher's no-grad forward, in bf16, and in
    # bf16 alone inside an fp32 step.
    run step-teacher 40 $step step --device cuda --coco --target teacher --variants none vgg19 \
        --precisions bf16 --repeats 10
    run step-teacher-bf16-under-fp32 40 $step step --device cuda --coco --target teacher \
        --variants none vgg19 --precisions fp32 --repeats 10 --opts MODEL.TEACHER.AUTOCAST bfloat16
    # Item 2: inference latency per image (must equal `none`).
    run inference 45 $step inference --device cuda --coco --variants none 1,1,1,1,1 vgg19 \
        --precisions fp32 bf16 --repeats 50 --opts MODEL.FCOS.INFERENCE_TH_TEST 0.0
    # Item 5: where one training iteration waits for the GPU, as our audit lists it and as
    # torch's own sync-debug mode reports it (fp32, then the fp16 GradScaler path).
    for amp in False True; do
        run "host-sync-amp-$amp" 40 python tools/host_sync.py --cuda-sync-debug --config-file \
            configs/Quickstart/CondInst-Percep_shapes.yaml MODEL.DEVICE cuda \
            SOLVER.AMP.ENABLED "$amp" SOLVER.AMP.DTYPE float16
    done
    # Item 1's kernels: the quickstart's shapes, then COCO scale.
    run kernels 25 python benchmarks/bench_kernels.py --device cuda
    run kernels-coco 35 python benchmarks/bench_kernels.py --device cuda --instances 500 \
        --mask-size 200 336
    # Item 4: the perceptual-loss matrix.
    run perceptual 120 python benchmarks/bench_perceptual.py --device cuda \
        --structures 1,1,1,1,1 vgg16 vgg19 --sizes 200x336 128x128 --instances 8 64 \
        --modes fp32 bf16 fp16 chunked bf16-chunked --chunk-size 16 --repeats 10
    ;;
3)
    # Issue 13: NMS.
    run nms 20 python benchmarks/bench_nms.py --device cuda
    # Issue 10: the model configs at COCO scale, fp32 and bf16.
    for precision in fp32 bf16; do
        run "models-$precision" 60 python benchmarks/bench_condinst_models.py --device cuda \
            --precision "$precision" --configs configs/CondInst/MS_R_50_1x.yaml \
            configs/CondInst/MS_R_50_3x_sem.yaml configs/CondInst/MS_R_50_BiFPN_1x.yaml \
            configs/CondInst/MS_R_50_BiFPN_3x_sem.yaml --image-size 800 1333 \
            --gt-per-image 40 --repeats 20
    done
    # Issue 11: deformable convolutions and BoxInst.
    run boxinst-dcn 45 python benchmarks/bench_boxinst_dcn.py step --device cuda \
        --image-size 800 1088 --images 2
    # Issue 13: the exported graph on the GPU.
    run export 120 python benchmarks/bench_export.py --config-file \
        configs/CondInst/MS_R_50_1x.yaml --dataset shapes_val --images 2 --repeat 5 \
        MODEL.DEVICE cuda MODEL.WEIGHTS "" MODEL.FCOS.INFERENCE_TH_TEST 0.0
    ;;
esac
echo "=== part $part done ($(date -u +%H:%M:%S) UTC)" >>"$log"
