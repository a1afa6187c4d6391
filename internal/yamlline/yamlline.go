// Package yamlline is what the project's two hand-edited YAML files (the
// cluster registry and the embedded store) share to report problems by
// line: node helpers, the real line of a syntax error, and a mapping
// reader that names unknown and repeated fields.
package yamlline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Deref follows aliases to the node they name. It returns nil for nil.
func Deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// IsNull reports whether n is a null scalar ("~", "null", or nothing).
func IsNull(n *yaml.Node) bool {
	return n != nil && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// Describe names a node for a message: "a list", "a mapping", "the value
// "x"", or "empty". show, when not nil, rewrites a scalar's value first
// (to mask a password).
func Describe(n *yaml.Node, show func(string) string) string {
	if n == nil {
		return "empty"
	}
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		v := n.Value
		if show != nil {
			v = show(v)
		}
		return fmt.Sprintf("the value %q", v)
	}
	return "empty"
}

// SyntaxError turns a YAML syntax error from parsing raw into the line it
// is on and its message without the parser's "yaml: line N:" prefix. The
// parser's own line is that of the enclosing block (and off by one), so
// the line is found again: the first at which raw, cut there, stops
// parsing. Constructs that span lines (a quoted string, a flow list) may
// make it point at their first line.
func SyntaxError(raw []byte, err error) (line int, msg string) {
	msg = strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, after, ok := strings.Cut(rest, ": "); ok {
			if _, err := strconv.Atoi(num); err == nil {
				msg = after
			}
		}
	}
	return firstBadLine(raw), msg
}

// firstBadLine returns the smallest n such that the first n lines of raw
// are not valid YAML, by bisection, or 0 when raw is valid.
func firstBadLine(raw []byte) int {
	ends := []int{0} // ends[n] is the length of the first n lines
	for i, b := range raw {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if ends[len(ends)-1] < len(raw) {
		ends = append(ends, len(raw))
	}
	bad := func(n int) bool {
		dec := yaml.NewDecoder(bytes.NewReader(raw[:ends[n]]))
		for {
			var doc yaml.Node
			if err := dec.Decode(&doc); err != nil {
				return !errors.Is(err, io.EOF)
			}
		}
	}
	good, broken := 0, len(ends)-1
	if !bad(broken) {
		return 0
	}
	for broken-good > 1 {
		mid := (good + broken) / 2
		if bad(mid) {
			broken = mid
		} else {
			good = mid
		}
	}
	return broken
}

// Fields returns the values of mapping node n by key, aliases followed.
// A key not in known, or given twice, is reported to fail with its line
// and its field path (path.key; path alone for a key that is not a
// scalar) and left out; hint says what the known fields are.
func Fields(n *yaml.Node, path string, known []string, hint string, fail func(line int, field, msg string)) map[string]*yaml.Node {
	fields := make(map[string]*yaml.Node, len(known))
	lines := make(map[string]int, len(known))
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := Deref(n.Content[i]), Deref(n.Content[i+1])
		field := k.Value
		if path != "" {
			field = path + "." + k.Value
		}
		if k.Kind != yaml.ScalarNode || !slices.Contains(known, k.Value) {
			if k.Kind != yaml.ScalarNode {
				field = path
			}
			fail(k.Line, field, "unknown field; "+hint)
			continue
		}
		if first, dup := lines[k.Value]; dup {
			fail(k.Line, field, fmt.Sprintf("given twice (first at line %d); keep one", first))
			continue
		}
		lines[k.Value] = k.Line
		fields[k.Value] = v
	}
	return fields
}
