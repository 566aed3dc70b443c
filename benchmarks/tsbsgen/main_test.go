package main

import (
	"math/rand"
	"strconv"
	"strings"
	"testing"
)

// The rows upstream TSBS produces for --use-case=cpu-only --seed=123 --scale=1 --log-interval=1s
// (from its generator test), and the tags of its first two hosts at --scale=2.
var wantHost0Values = [][]int64{
	{58, 2, 24, 61, 22, 63, 6, 44, 80, 38},
	{57, 3, 23, 60, 23, 64, 5, 44, 76, 36},
	{58, 2, 25, 62, 23, 65, 5, 45, 78, 36},
}

const (
	wantHost0Tags = ",hostname=host_0,region=eu-central-1,datacenter=eu-central-1a,rack=6,os=Ubuntu15.10,arch=x86,team=SF,service=19,service_version=1,service_environment=test"
	wantHost1Tags = ",hostname=host_1,region=us-west-1,datacenter=us-west-1a,rack=41,os=Ubuntu15.10,arch=x64,team=NYC,service=9,service_version=1,service_environment=staging"
)

func ints(h host) string {
	parts := make([]string, len(h.fields))
	for i, v := range h.fields {
		parts[i] = strconv.FormatInt(int64(v), 10)
	}
	return strings.Join(parts, ",")
}

func TestMatchesUpstreamRows(t *testing.T) {
	rng := rand.New(rand.NewSource(123))
	h := newHost(rng, 0)
	if h.tags != wantHost0Tags {
		t.Fatalf("tags: got %s", h.tags)
	}
	for epoch, want := range wantHost0Values {
		if epoch > 0 {
			h.advance(rng)
		}
		w := make([]string, len(want))
		for i, v := range want {
			w[i] = strconv.FormatInt(v, 10)
		}
		if got := ints(h); got != strings.Join(w, ",") {
			t.Fatalf("epoch %d: got %s want %s", epoch, got, strings.Join(w, ","))
		}
	}
}

func TestSecondHostTags(t *testing.T) {
	rng := rand.New(rand.NewSource(123))
	newHost(rng, 0)
	if h := newHost(rng, 1); h.tags != wantHost1Tags {
		t.Fatalf("tags: got %s", h.tags)
	}
}
