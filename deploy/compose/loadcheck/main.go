// compose-load: loads a Compose project with compose-spec/compose-go (the library docker compose
// itself uses), so every error `docker compose config` would report (schema, types, a depends_on
// or network_mode naming a service that does not exist, bad interpolation) fails here, offline.
// On success it prints the resolved project as JSON (the test reads services, commands,
// environment, ports and volumes from it). Built and run by scripts/compose-check.
//
// Usage: compose-load [-profile NAME]... [-env-file FILE]... FILE...
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var profiles, envFiles list
	flag.Var(&profiles, "profile", "a profile to enable (repeatable; * enables every profile)")
	flag.Var(&envFiles, "env-file", "an env file for interpolation (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: compose-load [-profile NAME]... [-env-file FILE]... FILE...")
		os.Exit(2)
	}
	files := flag.Args()
	workdir, err := filepath.Abs(filepath.Dir(files[0]))
	if err != nil {
		fail(err)
	}
	options, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(workdir),
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithProfiles(profiles),
		cli.WithName("analytics"),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := json.MarshalIndent(project, "", "  ")
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose-load: %v\n", err)
	os.Exit(1)
}
