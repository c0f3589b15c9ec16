# The cpu preset's ctc projector trained far longer than the cpu budget allows, on the cpu corpus
# (step2.sh cpu), to see where its test WER levels off (started by step3.sh with
# JOB=benchmarks/device/ctc_ceiling.sh). Extra arguments go to bench_ctc_projector.py.
source benchmarks/device/env.sh
while [ ! -f /root/synth.done ]; do sleep 2; done
date +%s > /root/bench.start
python3 benchmarks/bench_ctc_projector.py --profile cpu --record-as stage2_ctc_projector_ceiling \
  --variant "preset, 650 updates" \
  --variant "preset, 6000 updates" pretrain.max_steps=6000 pretrain.eval_every=100000 pretrain.warmup_steps=100 \
  --variant "hidden 2048, context 4, 6000 updates" "model.projector_kwargs={'hidden': 2048, 'hard': True, 'context': 4}" \
    pretrain.max_steps=6000 pretrain.eval_every=100000 pretrain.warmup_steps=100 "$@" > /root/bench.log 2>&1
echo "exit $?" >> /root/bench.log
cp /root/runs/cpu/results.json /root/runs/gpu/ 2>/dev/null || { mkdir -p /root/runs/gpu; cp /root/runs/cpu/results.json /root/runs/gpu/; }
date +%s > /root/bench.end
touch /root/bench.done
