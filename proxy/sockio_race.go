//go:build race

package proxy

import "syscall"

// Under the race detector, sockIO's reads and writes go through package
// syscall, whose Read and Write tell the detector that a write to a
// socket happens before the read of what it wrote (raw system calls would
// not, and tests passing data over sockets would report races that are
// not there).
func sockRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}

func sockWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}
