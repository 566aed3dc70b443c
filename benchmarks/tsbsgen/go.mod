module platformq.local/benchmarks/tsbsgen

go 1.22
