#!/usr/bin/env python3
"""Does a PACKET_TX_RING frame stay referenced by the kernel after it is sent
across a veth? (BENCHMARKS.md section 8, "PACKET_TX_RING: examined, not built".)

A packet socket with a TX ring sends 8 UDP datagrams (checksum 0, so the
receiver does not verify it) over a veth pair to a UDP socket that does not
read yet. Right after send(), the probe prints each ring slot's status, then
overwrites the payloads in the ring. Only then does the receiver read. If the
kernel still referenced the ring's pages, the receiver would see the new
bytes ("BBBBB"); if it copied them, it sees what was sent ("AAAAA").

usage (root): bench/tx_ring_probe.py [--topology xnet|same|napi] [--payload N]
  xnet: the two ends in two network namespaces (the bench's topology);
  same: both ends in one namespace;
  napi: xnet, with GRO and threaded NAPI on the receiving end.
Namespaces nss-txa-PID / nss-txb-PID and veths txa-PID / txb-PID, addresses
198.18.9.0/24, all removed on exit.
"""
import argparse
import ctypes
import json
import mmap
import os
import select
import socket
import struct
import subprocess
import sys

SOL_PACKET, PACKET_VERSION, PACKET_TX_RING = 263, 10, 13
TPACKET_V2 = 1
# TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where tpacket_snd reads a
# V2 frame's data (no PACKET_TX_HAS_OFF)
DATA_OFF = 32
FRAME, BLOCK, FRAMES = 2048, 4096, 8
CLONE_NEWNET = 0x40000000


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def setns(ns):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def frame(dst_mac, payload):
    udp = struct.pack("!HHHH", 5555, 9999, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton("198.18.9.1"), socket.inet_aton("198.18.9.2"))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + bytes.fromhex("020000000001") + b"\x08\x00" + ip + udp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topology", choices=["xnet", "same", "napi"], default="xnet")
    ap.add_argument("--payload", type=int, default=1400)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    pid = os.getpid()
    na, nb, va, vb = f"nss-txa-{pid}", f"nss-txb-{pid}", f"txa-{pid}", f"txb-{pid}"
    sender_ns = nb if a.topology == "same" else na
    sh(f"ip netns add {na}")
    try:
        sh(f"ip netns add {nb}")
        sh(f"ip link add {va} type veth peer name {vb}")
        sh(f"ip link set {va} netns {sender_ns} && ip link set {vb} netns {nb}")
        sh(f"ip -n {sender_ns} link set {va} up && ip -n {nb} link set {vb} up")
        sh(f"ip -n {nb} addr add 198.18.9.2/24 dev {vb}")
        if a.topology == "napi":
            sh(f"ip netns exec {na} ethtool -K {va} tso off >/dev/null")
            sh(f"ip netns exec {nb} ethtool -K {vb} gro on >/dev/null")
            sh(f"ip netns exec {nb} sh -c 'echo 1 > /sys/class/net/{vb}/threaded'")
        dst_mac = bytes.fromhex(json.loads(subprocess.check_output(
            f"ip -n {nb} -j link show {vb}", shell=True))[0]["address"].replace(":", ""))
        probe(nb, sender_ns, va, dst_mac, a.payload)
    finally:
        subprocess.run(f"ip netns del {na}; ip netns del {nb}", shell=True,
                       stderr=subprocess.DEVNULL)


def probe(nb, sender_ns, va, dst_mac, payload):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        setns(nb)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("198.18.9.2", 9999))
        os.write(ready_w, b"r")
        select.select([go_r], [], [], 10)
        u.setblocking(False)
        got = []
        for _ in range(FRAMES * 2):
            try:
                got.append(u.recv(65536))
            except BlockingIOError:
                break
        print(f"receiver read {len(got)} datagrams, first bytes:",
              [g[:6].decode(errors="replace") for g in got])
        sys.stdout.flush()
        os._exit(0)
    try:
        if not select.select([ready_r], [], [], 10)[0]:
            sys.exit("receiver did not start")
        setns(sender_ns)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.setsockopt(SOL_PACKET, PACKET_VERSION, struct.pack("i", TPACKET_V2))
        s.setsockopt(SOL_PACKET, PACKET_TX_RING,
                     struct.pack("IIII", BLOCK, FRAMES * FRAME // BLOCK, FRAME, FRAMES))
        s.bind((va, 0))
        ring = mmap.mmap(s.fileno(), FRAMES * FRAME, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
        for i in range(FRAMES):
            f = frame(dst_mac, b"AAAAA%d" % i + b"x" * payload)
            off = i * FRAME
            ring[off + DATA_OFF:off + DATA_OFF + len(f)] = f
            ring[off + 4:off + 8] = struct.pack("I", len(f))  # tp_len
            ring[off:off + 4] = struct.pack("I", 1)  # TP_STATUS_SEND_REQUEST
        sent = s.send(b"")
        status = [struct.unpack("I", ring[i * FRAME:i * FRAME + 4])[0] for i in range(FRAMES)]
        print(f"send() returned {sent} bytes; slot status right after "
              f"(0 = available again, 2 = still sending): {status}")
        for i in range(FRAMES):
            off = i * FRAME + DATA_OFF + 14 + 20 + 8
            ring[off:off + 6] = b"BBBBB%d" % i
        os.write(go_w, b"g")
    finally:
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
