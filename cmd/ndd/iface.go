package main

import "net"

// netInterface is net.InterfaceByName, named for what ndd checks with it.
func netInterface(name string) (*net.Interface, error) { return net.InterfaceByName(name) }
