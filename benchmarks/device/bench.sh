# The gpu profile with the embedded models, once the corpus is there (started by step3.sh).
# Extra arguments go to bench_speechlm.py (e.g. --set train.lr=2e-4 --record-as NAME).
source benchmarks/device/env.sh
while [ ! -f /root/synth.done ]; do sleep 2; done
date +%s > /root/bench.start
python3 benchmarks/bench_speechlm.py --profile gpu --set model.encoder_source=openai/whisper-tiny.en \
  --set model.llm=HuggingFaceTB/SmolLM2-135M-Instruct --out /root/bench.json "$@" > /root/bench.log 2>&1
echo "exit $?" >> /root/bench.log
date +%s > /root/bench.end
touch /root/bench.done
