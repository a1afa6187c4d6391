package store_test

import (
	"errors"
	"fmt"

	"github.com/replproxy/replproxy/store"
)

func ExampleZone_ParseName() {
	zone, err := store.NewZone("Repl.Test.")
	if err != nil {
		panic(err)
	}
	for _, host := range []string{
		"blog.alice.repl.test",
		"Blog.Alice.REPL.test:8443",
		"r123.id.repl.test.",
		"_acme-challenge.alice.repl.test",
		"www.Bücher.example",
		"a.b.c.repl.test",
		"[::1]:8080",
	} {
		k, err := zone.ParseName(host)
		if err != nil {
			fmt.Println(err, errors.Is(err, store.ErrInvalid))
			continue
		}
		fmt.Println(k)
	}
	// Output:
	// repl:alice/blog
	// repl:alice/blog
	// repl-id:r123
	// challenge:_acme-challenge.alice.repl.test
	// domain:www.xn--bcher-kva.example
	// invalid name "a.b.c.repl.test": too many labels under the zone repl.test true
	// invalid name "[::1]:8080": host is an IP address, not a name true
}

func ExampleZone_Format() {
	zone, err := store.NewZone("repl.test")
	if err != nil {
		panic(err)
	}
	fmt.Println(zone.Format(store.ReplKey("alice", "blog")))
	fmt.Println(zone.Format(store.ReplIDKey("r123")))
	// Output:
	// blog.alice.repl.test
	// r123.id.repl.test
}
