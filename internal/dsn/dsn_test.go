package dsn

import (
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for _, tc := range []struct {
		name, dsn, want string
	}{
		{"URL with password", "postgres://replproxy:hunter2@db-east:5432/replproxy?sslmode=require", "postgres://replproxy:xxxxx@db-east:5432/replproxy?sslmode=require"},
		{"URL without password", "postgres://replproxy@db-east/replproxy", "postgres://replproxy@db-east/replproxy"},
		{"URL with empty password", "postgres://replproxy:@db-east/replproxy", "postgres://replproxy:@db-east/replproxy"},
		{"URL without user", "postgresql://db-east:5432/replproxy", "postgresql://db-east:5432/replproxy"},
		{"URL password with @ / and ?", "postgres://u:a@b/c?d@db/x?sslmode=disable", "postgres://u:xxxxx@db/x?sslmode=disable"},
		{"URL several hosts", "postgres://u:pw@h1:5432,[2001:db8::1]:5433/x", "postgres://u:xxxxx@h1:5432,[2001:db8::1]:5433/x"},
		{"URL password parameter", "postgres://db/x?user=u&password=hunter2&sslmode=require", "postgres://db/x?user=u&password=xxxxx&sslmode=require"},
		{"URL sslpassword parameter", "postgres://db/x?sslpassword=hunter2", "postgres://db/x?sslpassword=xxxxx"},
		{"URL escaped password key", "postgres://db/x?pass%77ord=hunter2", "postgres://db/x?pass%77ord=xxxxx"},
		{"URL password parameter with &", "postgres://db/x?password=hun&ter2&a=b", "postgres://db/x?password=xxxxx&xxxxx&a=b"},
		{"URL @ in a parameter", "postgres://db/x?application_name=a@b", "postgres://db/x?application_name=a@b"},
		{"URL @ in a parameter and a password", "postgres://u:pw@db/x?application_name=a@b", "postgres://u:xxxxx@b"}, // too much, never too little
		{"other scheme", "mysql://root:hunter2@db/x", "mysql://root:xxxxx@db/x"},
		{"key=value", "host=db user=replproxy password=hunter2 dbname=replproxy", "host=db user=replproxy password=xxxxx dbname=replproxy"},
		{"key=value quoted", "password='hun ter\\'2' host=db", "password=xxxxx host=db"},
		{"key=value spaced", "host = db password = hunter2", "host = db password = xxxxx"},
		{"key=value unclosed quote", "host=db password='hunter2", "host=db password=xxxxx"},
		{"key=value without password", "host=db dbname=replproxy", "host=db dbname=replproxy"},
		{"file path", "/var/lib/replproxy/east.db", "/var/lib/replproxy/east.db"},
		{"file path with =", "/data/a=b.db", "/data/a=b.db"},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Redact(tc.dsn); got != tc.want {
				t.Errorf("RedactDSN(%q) = %q, want %q", tc.dsn, got, tc.want)
			}
		})
	}
}

func TestIsPostgres(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"postgres://db/x", true},
		{"postgresql://u@db/x", true},
		{"POSTGRES://db/x", false}, // pgx reads only the lower-case scheme
		{"host=db dbname=x", false},
		{"/var/lib/replproxy/east.db", false},
		{"east.db", false},
		{"", false},
	} {
		if got := IsPostgres(tc.addr); got != tc.want {
			t.Errorf("IsPostgresDSN(%q) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}

func FuzzRedact(f *testing.F) {
	f.Add("hunter2")
	f.Add("a/b?c")
	f.Add("p%zz")
	f.Fuzz(func(t *testing.T, password string) {
		if password == "" {
			return
		}
		dsn := "postgres://replproxy:" + password + "@db/replproxy"
		if got, want := Redact(dsn), "postgres://replproxy:xxxxx@db/replproxy"; got != want {
			t.Fatalf("RedactDSN(%q) = %q, want %q", dsn, got, want)
		}
		kv := "host=db password='" + strings.ReplaceAll(strings.ReplaceAll(password, `\`, `\\`), "'", `\'`) + "' dbname=x"
		if got, want := Redact(kv), "host=db password=xxxxx dbname=x"; got != want {
			t.Fatalf("RedactDSN(%q) = %q, want %q", kv, got, want)
		}
	})
}
