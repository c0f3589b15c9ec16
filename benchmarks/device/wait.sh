# Wait up to $1 s for the bench, then send back its log, metrics and results.json (under $OUT)
end=$((SECONDS + ${1:-500}))
while [ ! -f /root/bench.done ] && [ $SECONDS -lt $end ]; do sleep 5; done
grep -v "REF\|HYP" /root/bench.log | tail -25
cp /root/bench.log /root/synth.log $OUT/ 2>/dev/null; cp /root/runs/gpu/results.json $OUT/ 2>/dev/null; cp /root/bench.json $OUT/ 2>/dev/null
cat /root/synth.start /root/bench.start /root/bench.end 2>/dev/null; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
[ -f /root/bench.done ] && echo BENCH DONE || echo BENCH RUNNING
