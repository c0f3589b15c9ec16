# Call 2: stash chunk 2, install faker, synthesise a corpus in the background (the gpu one, 57,200
# utterances, takes 53 s on 16 cores). $1: the corpus profile (default gpu).
profile=${1:-gpu}
cp .xfer/c2/big.ab /root/stash/ && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .xfer/c2/faker-*.whl
source benchmarks/device/env.sh
setsid nohup bash -c "date +%s > /root/synth.start; python3 -c 'from speechlm_lib.data.corpus import ensure_corpus; print(ensure_corpus(\"$profile\"))' > /root/synth.log 2>&1; echo \"exit \$?\" >> /root/synth.log; touch /root/synth.done" < /dev/null > /dev/null 2>&1 &
sleep 3; cat /root/synth.log; echo launched "$profile"
