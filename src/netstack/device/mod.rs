//! Frame devices: the AF_PACKET socket and, for tests, an in-memory device,
//! a pcap-writing tracer and a fault injector. STUB: to be implemented.
