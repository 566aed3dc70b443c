// Command tsbsgen writes the TSBS "cpu-only" data set in InfluxDB line protocol.
//
// It stands in for `tsbs_generate_data --use-case=cpu-only --format=influx` when the
// github.com/timescale/tsbs module cannot be fetched (the Go module proxy reachable here refuses it).
// It takes the same flags for that case and follows the TSBS generator's model: per host ten
// clamped random walks in [0, 100] stepped by N(0, 1), started at U(0, 100), written as integers;
// static tags drawn per host; one row per host every log interval. Random numbers are drawn from
// Go's math/rand seeded with --seed in the order TSBS draws them, so the output matches the
// upstream tool: main_test.go checks it against the rows TSBS's own generator test expects for
// seed 123 (the upstream binary itself could not be built here to compare whole files).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"time"
)

// Tag value choices of the TSBS devops model.
var (
	regionNames = []string{
		"us-east-1", "us-west-1", "us-west-2", "eu-west-1", "eu-central-1",
		"ap-southeast-1", "ap-southeast-2", "ap-northeast-1", "sa-east-1",
	}
	regionDatacenters = [][]string{
		{"us-east-1a", "us-east-1b", "us-east-1c", "us-east-1e"},
		{"us-west-1a", "us-west-1b"},
		{"us-west-2a", "us-west-2b", "us-west-2c"},
		{"eu-west-1a", "eu-west-1b", "eu-west-1c"},
		{"eu-central-1a", "eu-central-1b"},
		{"ap-southeast-1a", "ap-southeast-1b"},
		{"ap-southeast-2a", "ap-southeast-2b"},
		{"ap-northeast-1a", "ap-northeast-1c"},
		{"sa-east-1a", "sa-east-1b", "sa-east-1c"},
	}
	teams        = []string{"SF", "NYC", "LON", "CHI"}
	osChoices    = []string{"Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"}
	archChoices  = []string{"x64", "x86"}
	environments = []string{"production", "staging", "test"}
	cpuFields    = []string{
		"usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait",
		"usage_irq", "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice",
	}
)

type host struct {
	tags   string // ",hostname=...,region=...": the tag part of every line of this host
	fields []float64
}

func pick(rng *rand.Rand, s []string) string { return s[rng.Intn(len(s))] }

// newHost draws a host's walks' start values first, then its tags, as TSBS does.
func newHost(rng *rand.Rand, id int) host {
	h := host{fields: make([]float64, len(cpuFields))}
	for i := range h.fields {
		h.fields[i] = rng.Float64() * 100.0
	}
	r := rng.Intn(len(regionNames))
	datacenter := pick(rng, regionDatacenters[r])
	rack := strconv.FormatInt(rng.Int63n(100), 10)
	arch := pick(rng, archChoices)
	osName := pick(rng, osChoices)
	service := strconv.FormatInt(rng.Int63n(20), 10)
	serviceVersion := strconv.FormatInt(rng.Int63n(2), 10)
	environment := pick(rng, environments)
	team := pick(rng, teams)
	// The line's tag order is TSBS's MachineTagKeys order, not the draw order.
	h.tags = fmt.Sprintf(
		",hostname=host_%d,region=%s,datacenter=%s,rack=%s,os=%s,arch=%s,team=%s,service=%s,service_version=%s,service_environment=%s",
		id, regionNames[r], datacenter, rack, osName, arch, team, service, serviceVersion, environment)
	return h
}

// advance steps every walk of the host by one N(0, 1) draw and clamps it to [0, 100].
func (h *host) advance(rng *rand.Rand) {
	for i := range h.fields {
		v := h.fields[i] + rng.NormFloat64()
		if v > 100 {
			v = 100
		}
		if v < 0 {
			v = 0
		}
		h.fields[i] = v
	}
}

func parseTime(name, value string) time.Time {
	t, err := time.Parse(time.RFC3339, value)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tsbsgen: --%s: %v\n", name, err)
		os.Exit(2)
	}
	return t.UTC()
}

func main() {
	useCase := flag.String("use-case", "cpu-only", "use case; only cpu-only is implemented")
	format := flag.String("format", "influx", "output format; only influx is implemented")
	scale := flag.Int("scale", 1, "number of hosts")
	seed := flag.Int64("seed", 0, "random seed")
	logInterval := flag.Duration("log-interval", 10*time.Second, "time between rows of one host")
	start := flag.String("timestamp-start", "2016-01-01T00:00:00Z", "first timestamp (RFC 3339)")
	end := flag.String("timestamp-end", "2016-01-02T00:00:00Z", "end timestamp, exclusive (RFC 3339)")
	file := flag.String("file", "", "output file; empty means standard output")
	flag.Parse()

	if *useCase != "cpu-only" || *format != "influx" {
		fmt.Fprintln(os.Stderr, "tsbsgen: only --use-case=cpu-only --format=influx is implemented")
		os.Exit(2)
	}
	if *scale <= 0 || *logInterval <= 0 {
		fmt.Fprintln(os.Stderr, "tsbsgen: --scale and --log-interval must be positive")
		os.Exit(2)
	}
	t0 := parseTime("timestamp-start", *start)
	t1 := parseTime("timestamp-end", *end)
	epochs := int64(t1.Sub(t0) / *logInterval)

	out := os.Stdout
	if *file != "" {
		f, err := os.Create(*file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tsbsgen: %v\n", err)
			os.Exit(1)
		}
		defer f.Close()
		out = f
	}
	w := bufio.NewWriterSize(out, 1<<20)
	defer w.Flush()

	rng := rand.New(rand.NewSource(*seed))
	hosts := make([]host, *scale)
	for i := range hosts {
		hosts[i] = newHost(rng, i)
	}
	buf := make([]byte, 0, 512)
	for e := int64(0); e < epochs; e++ {
		if e > 0 {
			for i := range hosts {
				hosts[i].advance(rng)
			}
		}
		ts := t0.Add(time.Duration(e) * *logInterval).UnixNano()
		for i := range hosts {
			buf = append(buf[:0], "cpu"...)
			buf = append(buf, hosts[i].tags...)
			for j, name := range cpuFields {
				if j == 0 {
					buf = append(buf, ' ')
				} else {
					buf = append(buf, ',')
				}
				buf = append(buf, name...)
				buf = append(buf, '=')
				// TSBS writes the cpu fields as integers, truncating the walk's value.
				buf = strconv.AppendInt(buf, int64(hosts[i].fields[j]), 10)
				buf = append(buf, 'i')
			}
			buf = append(buf, ' ')
			buf = strconv.AppendInt(buf, ts, 10)
			buf = append(buf, '\n')
			if _, err := w.Write(buf); err != nil {
				fmt.Fprintf(os.Stderr, "tsbsgen: %v\n", err)
				os.Exit(1)
			}
		}
	}
}
