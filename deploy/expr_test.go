package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The files the tests read, relative to this folder.
var (
	ruleFiles     = []string{"prometheus/replproxy.rules.yml", "prometheus/replns.rules.yml"}
	ruleTestFiles = []string{"prometheus/replproxy.rules_test.yml", "prometheus/replns.rules_test.yml"}
	dashboardFile = "grafana/replproxy.json"
)

type rulesFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record string `yaml:"record"`
			Alert  string `yaml:"alert"`
			Expr   string `yaml:"expr"`
			For    string `yaml:"for"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// expression is a PromQL expression and where it comes from.
type expression struct{ where, expr string }

// rules returns every rule's expression, the recording rules' names and
// the alerts' names.
func rules(t *testing.T) (exprs []expression, records, alerts []string) {
	t.Helper()
	for _, f := range ruleFiles {
		var rf rulesFile
		readYAML(t, f, &rf)
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				name := r.Record + r.Alert
				exprs = append(exprs, expression{f + ": " + name, r.Expr})
				if r.Record != "" {
					records = append(records, r.Record)
				} else {
					alerts = append(alerts, r.Alert)
				}
			}
		}
	}
	return exprs, records, alerts
}

// dashboard returns every query of the dashboard: each panel's targets
// and each query variable's.
func dashboard(t *testing.T) []expression {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name, Type, Definition string
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []expression
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: %v", dashboardFile, err)
			}
			for _, tg := range p.Targets {
				out = append(out, expression{dashboardFile + ": panel " + p.Title, tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		// label_values(<selector>, <label>): the selector is PromQL.
		m := regexp.MustCompile(`^label_values\((.*),\s*(\w+)\)$`).FindStringSubmatch(v.Definition)
		if m == nil {
			t.Fatalf("%s: variable %s: %q is not label_values(selector, label)", dashboardFile, v.Name, v.Definition)
		}
		out = append(out, expression{dashboardFile + ": variable " + v.Name, m[1]})
	}
	if len(out) == 0 {
		t.Fatalf("%s: no queries", dashboardFile)
	}
	return out
}

// grafanaVars replaces the dashboard's variables with what they stand for
// in a query Prometheus can run.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__range", "1h", "$__interval", "15s", "$cluster", ".*")

// matcher is one label matcher of a selector.
type matcher struct{ label, op, value string }

// selector is a metric name and its label matchers.
type selector struct {
	name     string
	matchers []matcher
}

var (
	reRange    = regexp.MustCompile(`\[[^\]]*\]`)
	reGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reBraces   = regexp.MustCompile(`([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}`)
	reMatcher  = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$`)
	reIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true}
)

// selectors returns the selectors of a PromQL expression. It is not a
// PromQL parser, only enough of one for this project's expressions: names
// and {matchers}, with ranges, grouping clauses, functions, keywords and
// numbers left out. A matcher it cannot read fails t.
func selectors(t *testing.T, e expression) []selector {
	t.Helper()
	s := reRange.ReplaceAllString(grafanaVars.Replace(e.expr), "")
	s = reGrouping.ReplaceAllString(s, "")
	var out []selector
	s = reBraces.ReplaceAllStringFunc(s, func(m string) string {
		sm := reBraces.FindStringSubmatch(m)
		sel := selector{name: sm[1]}
		for part := range strings.SplitSeq(sm[2], ",") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			mm := reMatcher.FindStringSubmatch(part)
			if mm == nil {
				t.Errorf("%s: cannot read the matcher %q in %q", e.where, part, e.expr)
				continue
			}
			sel.matchers = append(sel.matchers, matcher{mm[1], mm[2], mm[3]})
		}
		if sel.name == "" {
			t.Errorf("%s: a selector without a metric name: %q", e.where, m)
		}
		out = append(out, sel)
		return " "
	})
	for _, loc := range reIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if keywords[id] || (loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.')) {
			continue // a keyword, or the tail of a number (1e3)
		}
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue // a function or an aggregation
		}
		out = append(out, selector{name: id})
	}
	return out
}

func TestSelectors(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`sum by (job, instance) (rate(a_total{x="1", y=~"b|c"}[5m])) / sum(rate(a_total[5m])) > 0.1`, []string{`a_total{x="1" y=~"b|c"}`, "a_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))`, []string{"h_bucket"}},
		{`x:y:rate5m > 0.05 and on (job, instance) sum by (job) (z{route=~"local|forwarded"}) > 1`, []string{`z{route=~"local|forwarded"}`, "x:y:rate5m"}},
		{`g < 14 * 86400`, []string{"g"}},
		{`up{job="replproxy"} == 0`, []string{`up{job="replproxy"}`}},
	} {
		var got []string
		for _, s := range selectors(t, expression{"test", c.expr}) {
			var ms []string
			for _, m := range s.matchers {
				ms = append(ms, m.label+m.op+`"`+m.value+`"`)
			}
			if ms != nil {
				got = append(got, s.name+"{"+strings.Join(ms, " ")+"}")
			} else {
				got = append(got, s.name)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("selectors(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}

type ruleTestFile struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTests []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestEveryAlertIsTested: each alert of the rules has a promtool test in
// which it fires and one in which it is silent, and the test files load
// every rules file (promtool itself runs them: make rules).
func TestEveryAlertIsTested(t *testing.T) {
	_, _, alerts := rules(t)
	fires, silent := map[string]int{}, map[string]int{}
	var loaded []string
	for _, f := range ruleTestFiles {
		var tf ruleTestFile
		readYAML(t, f, &tf)
		for _, r := range tf.RuleFiles {
			loaded = append(loaded, "prometheus/"+r)
		}
		for _, tc := range tf.Tests {
			for _, a := range tc.AlertRuleTests {
				if !slices.Contains(alerts, a.Alertname) {
					t.Errorf("%s: a test of %s at %s, which no rule defines", f, a.Alertname, a.EvalTime)
				}
				if len(a.ExpAlerts) > 0 {
					fires[a.Alertname]++
				} else {
					silent[a.Alertname]++
				}
			}
		}
	}
	for _, f := range ruleFiles {
		if !slices.Contains(loaded, f) {
			t.Errorf("no test file loads %s", f)
		}
	}
	for _, a := range alerts {
		if fires[a] == 0 {
			t.Errorf("%s: no test in which it fires", a)
		}
		if silent[a] == 0 {
			t.Errorf("%s: no test in which it is silent", a)
		}
	}
	t.Logf("%d alerts, each fired and silenced in %v", len(alerts), ruleTestFiles)
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(false)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
