# Call 2: stash chunk 2, install faker, synthesise the gpu corpus in the background (53 s on 16 cores)
cp .xfer/c2/big.ab /root/stash/ && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .xfer/c2/faker-*.whl
source benchmarks/device/env.sh
setsid nohup bash -c 'date +%s > /root/synth.start; python3 -c "from speechlm_lib.corpus import ensure_corpus; print(ensure_corpus(\"gpu\"))" > /root/synth.log 2>&1; echo "exit $?" >> /root/synth.log; touch /root/synth.done' < /dev/null > /dev/null 2>&1 &
sleep 3; cat /root/synth.log; echo launched
