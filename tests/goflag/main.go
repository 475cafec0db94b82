// Command goflag reads argv lists with Go's own flag package, for tests/it/goflag.rs to
// compare with the server's reader. Standard library only.
//
// Stdin: first one JSON line describing the flags,
//
//	{"name": "mtt-mu-server", "flags": [{"names": ["b", "bind"], "bool": false}, ...]}
//
// then one JSON array of argv strings (without argv[0]) per line. Every name is defined,
// once, as a flag of its own (BoolVar or StringVar, so parsing is entirely Go's); names in
// one entry are aliases of one row of the server's table. For each argv one JSON line
// comes out, in order:
//
//	{"help": true}                          Parse returned flag.ErrHelp
//	{"err": true}                           any other error
//	{"set": {"b": ":443"}, "rest": ["x"]}   row's first name -> its last value; Args()
//
// Which alias of a row was set last is known by wrapping each flag's Value: Set records
// the value under the row after Go's own Set has accepted it.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

type spec struct {
	Name  string `json:"name"`
	Flags []struct {
		Names []string `json:"names"`
		Bool  bool     `json:"bool"`
	} `json:"flags"`
}

// parsed is the answer when Parse succeeds; failures are small maps.
type parsed struct {
	Set  map[string]string `json:"set"`
	Rest []string          `json:"rest"`
}

// ordered wraps the Value that BoolVar or StringVar made, noting the last Set per row.
type ordered struct {
	flag.Value
	row  int
	last []string // per row, for the argv being parsed; reset before each
}

// IsBoolFlag keeps Go's bool handling (no next argument) for wrapped bool flags.
func (o *ordered) IsBoolFlag() bool {
	b, ok := o.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func (o *ordered) Set(s string) error {
	if err := o.Value.Set(s); err != nil {
		return err
	}
	o.last[o.row] = o.Value.String()
	return nil
}

// flags is the flag table defined once: a never-parsed FlagSet to copy for each argv.
type flags struct {
	spec     *spec
	template flag.FlagSet
	rowOf    map[string]int
	last     []string
}

func define(sp *spec) *flags {
	fl := &flags{spec: sp, rowOf: map[string]int{}, last: make([]string, len(sp.Flags))}
	fs := &fl.template
	fs.Init(sp.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for row, f := range sp.Flags {
		for _, name := range f.Names {
			if f.Bool {
				fs.BoolVar(new(bool), name, false, "")
			} else {
				fs.StringVar(new(string), name, "", "")
			}
			g := fs.Lookup(name)
			g.Value = &ordered{Value: g.Value, row: row, last: fl.last}
			fl.rowOf[name] = row
		}
	}
	return fl
}

func main() {
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	defer out.Flush()

	line, err := in.ReadBytes('\n')
	if err != nil && err != io.EOF {
		fail("reading the flag description: %v", err)
	}
	var sp spec
	if err := json.Unmarshal(line, &sp); err != nil {
		fail("flag description: %v", err)
	}
	fl := define(&sp)
	enc := json.NewEncoder(out)
	for {
		line, err := in.ReadBytes('\n')
		if len(line) > 0 {
			var args []string
			if err := json.Unmarshal(line, &args); err != nil {
				fail("argv line %q: %v", line, err)
			}
			if err := enc.Encode(fl.parse(args)); err != nil {
				fail("writing: %v", err)
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			fail("reading: %v", err)
		}
	}
}

// parse reads args as FlagSet.Parse does, on a copy of the template: the copy shares the
// definitions and keeps its own parse state (which flags were set, the arguments left),
// the same as a FlagSet defined afresh, without defining every flag again for each line.
func (fl *flags) parse(args []string) interface{} {
	fs := fl.template
	for i := range fl.last {
		fl.last[i] = ""
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return map[string]bool{"help": true}
		}
		return map[string]bool{"err": true}
	}
	set := map[string]string{}
	fs.Visit(func(f *flag.Flag) {
		row := fl.rowOf[f.Name]
		set[fl.spec.Flags[row].Names[0]] = fl.last[row]
	})
	return parsed{Set: set, Rest: append([]string{}, fs.Args()...)}
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "goflag: "+format+"\n", a...)
	os.Exit(1)
}
