package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// completionCmd is `ndctl completion bash`: a completion script made from
// the command tree itself, so that it never lags behind the commands.
func completionCmd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	args, err := s.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if args[0] != "bash" {
		return usagef("shell %q: only bash is supported", args[0])
	}
	return writeBashCompletion(ctx, s.env, s.stdout)
}

// completionNode is what the script knows of one command: its
// subcommands (a group) or its flags (a leaf).
type completionNode struct {
	path  string
	subs  []string
	flags []string            // --name, sorted
	takes map[string][]string // flags that take a value -> its choices (may be none)
	files bool                // its positional arguments are files
}

// completionNodes walks the tree; each leaf's flags are learnt by asking it
// for its help with the output thrown away.
func completionNodes(ctx context.Context, e *env) []completionNode {
	quiet := *e
	quiet.stdout, quiet.stderr = io.Discard, io.Discard
	var out []completionNode
	var walk func(c *command)
	walk = func(c *command) {
		n := completionNode{path: c.path(), takes: map[string][]string{}}
		if c.run == nil || c.name == "help" {
			n.subs = c.subNames()
			if c.name == "help" {
				n.subs = commandTree().subNames()
			}
		}
		if c.run != nil {
			s := &session{env: &quiet, cmd: c}
			s.onHelp = func(fs *flag.FlagSet) {
				fs.VisitAll(func(f *flag.Flag) {
					if slices.Contains(globalFlagNames, f.Name) {
						return
					}
					n.flags = append(n.flags, "--"+f.Name)
					if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
						return
					}
					name, _ := flag.UnquoteUsage(f)
					var choices []string
					if strings.Contains(name, "|") {
						choices = strings.Split(name, "|")
					}
					n.takes["--"+f.Name] = choices
				})
			}
			_ = c.run(ctx, s, []string{"-h"})
			n.files = strings.Contains(c.args, "FILE")
			if c.name == "completion" {
				n.subs = []string{"bash"}
			}
		}
		if c.name != "" {
			out = append(out, n)
		}
		for _, sc := range c.subs {
			walk(sc)
		}
	}
	root := commandTree()
	out = append(out, completionNode{subs: root.subNames()})
	for _, sc := range root.subs {
		walk(sc)
	}
	return out
}

// writeBashCompletion writes the script: one function that finds how far
// along the command tree the words already typed go, then offers that
// node's subcommands, flags or flag values.
func writeBashCompletion(ctx context.Context, e *env, w io.Writer) error {
	nodes := completionNodes(ctx, e)
	var b strings.Builder
	b.WriteString(`# bash completion for ndctl, written by 'ndctl completion bash'.
_ndctl() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev=
	((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD-1]}
	local path= skip= i w
	for ((i = 1; i < COMP_CWORD; i++)); do
		w=${COMP_WORDS[i]}
		if [[ -n $skip ]]; then skip=; continue; fi
		case $w in
		--socket | --url | --token) skip=1; continue ;;
		-*) _ndctl_takes_value "$path" "$w" && skip=1; continue ;;
		esac
		case "${path:+$path }$w" in
`)
	var known []string
	for _, n := range nodes {
		if n.path != "" {
			known = append(known, fmt.Sprintf("%q", n.path))
		}
	}
	fmt.Fprintf(&b, "\t\t%s) path=\"${path:+$path }$w\" ;;\n", strings.Join(known, " | "))
	b.WriteString(`		esac
	done
	# words: subcommands; flags: the command's own; values: what may follow
	# $prev (a single space for a flag whose value is free: no completion).
	local words= flags= values= files=
	case $path in
`)
	for _, n := range nodes {
		fmt.Fprintf(&b, "\t%q)", n.path)
		if len(n.subs) > 0 {
			fmt.Fprintf(&b, " words=%q;", strings.Join(n.subs, " "))
		}
		if len(n.flags) > 0 {
			fmt.Fprintf(&b, " flags=%q;", strings.Join(n.flags, " "))
		}
		if n.files {
			b.WriteString(" files=1;")
		}
		if len(n.takes) > 0 {
			b.WriteString(" case $prev in")
			for _, f := range sortedKeys(n.takes) {
				fmt.Fprintf(&b, " %s) values=%q ;;", f, strings.Join(n.takes[f], " ")+" ")
			}
			b.WriteString(" esac;")
		}
		b.WriteString(" ;;\n")
	}
	b.WriteString(`	esac
	case $prev in
	--socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;
	--url | --token) COMPREPLY=(); return ;;
	esac
	if [[ -n $values ]]; then
		COMPREPLY=($(compgen -W "$values" -- "$cur"))
		return
	fi
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags --socket --url --token --json --help" -- "$cur"))
	elif [[ -n $words ]]; then
		COMPREPLY=($(compgen -W "$words" -- "$cur"))
	elif [[ -n $files ]]; then
		COMPREPLY=($(compgen -f -- "$cur"))
	else
		COMPREPLY=()
	fi
}
# _ndctl_takes_value PATH FLAG: true when FLAG of command PATH takes a value.
_ndctl_takes_value() {
	case "$1 $2" in
`)
	var valued []string
	for _, n := range nodes {
		for _, f := range sortedKeys(n.takes) {
			valued = append(valued, fmt.Sprintf("%q", n.path+" "+f))
		}
	}
	if len(valued) > 0 {
		fmt.Fprintf(&b, "\t%s) return 0 ;;\n", strings.Join(valued, " | "))
	}
	b.WriteString(`	esac
	return 1
}
complete -F _ndctl ndctl
`)
	_, err := io.WriteString(w, b.String())
	return err
}

func sortedKeys(m map[string][]string) []string {
	var k []string
	for f := range m {
		k = append(k, f)
	}
	slices.Sort(k)
	return k
}
