#!/usr/bin/env python3
"""Malformed traffic for crates/lb-testbed/tests/malformed_link.rs.

Crafts Ethernet frames with scapy and sends them out of the client's veth (run it inside the
client namespace: `ip netns exec <ns> python3 malformed.py ...`), one category at a time.
Every frame says what the node's datapath must make of it: the outcome counter it must bump
(`pass_fragment`, `service_new_flow`, `drop:truncated`, ...) and any other counter it moves
(`tunnel_decapsulated`). Frames to a service that must start a flow also name that flow, and
whether it is real: whether a receiver would accept the packet (good checksums) or discard it.

Talks to the test over a pipe, one line each way:
    READY <categories> <frames>
    SENT <category> <frames> <expect> <flows>    (then waits for a line on stdin)
    DONE
<expect> is `key=count,...`; <flows> is `-` or `;`-separated `proto|src|sport|dst|dport|real`.

Deterministic: every random choice comes from one generator seeded by --seed. Every frame is
addressed to an address given on the command line (addresses inside the test's namespaces): the
script refuses to build any other.
"""

import argparse
import ipaddress
import random
import select
import struct
import sys

from scapy.all import (  # noqa: E402  (scapy prints warnings on import; keep them off stdout)
    IP,
    TCP,
    UDP,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    PadN,
    Raw,
    conf,
    raw,
    sendp,
)

conf.verb = 0

# Frames per category are weights; the total is scaled to --frames.
ETH = 14


class Ctx:
    def __init__(self, args):
        self.a = args
        self.rng = random.Random(args.seed)
        self.src_mac = args.src_mac
        self.dst_mac = args.dst_mac
        self.allowed = {str(ipaddress.ip_address(x)) for x in self.all_dsts()}
        # Source ports of flows to a service: each frame that starts a flow gets its own, below
        # the client's ephemeral range (32768-60999) and the collision resolver's (20000-29999),
        # so no crafted flow shares a tuple with another or with the real connection afterwards.
        self.next_port = 1024

    def all_dsts(self):
        a = self.a
        return [a.node, a.node6, a.vip, a.vip6] + a.others + a.others6

    def check(self, dst):
        if str(ipaddress.ip_address(dst)) not in self.allowed:
            raise SystemExit(f"refusing to address {dst}: not an address of the test's namespaces")
        return dst

    def flow_port(self):
        p = self.next_port
        self.next_port += 1
        if p >= 20000:
            raise SystemExit("out of flow source ports")
        return p

    def rport(self):
        # Source ports of frames that start no flow: any, outside the flow range above.
        return self.rng.randrange(40000, 60000)

    def junk(self, n):
        return bytes(self.rng.getrandbits(8) for _ in range(n))

    def ether(self):
        return Ether(dst=self.dst_mac, src=self.src_mac)

    def v4(self, dst, src=None, **kw):
        return self.ether() / IP(src=src or self.a.client, dst=self.check(dst), **kw)

    def v6(self, dst, src=None, **kw):
        return self.ether() / IPv6(src=src or self.a.client6, dst=self.check(dst), **kw)

    def non_service4(self):
        """An IPv4 destination of no service: a backend, the node, or the VIP on another port."""
        a = self.a
        dst = self.rng.choice(a.others + [a.node, a.vip])
        port = self.rng.choice([8080, 22, 443, 9]) if dst != a.vip else a.port + 1
        return dst, port

    def non_service6(self):
        a = self.a
        dst = self.rng.choice(a.others6 + [a.node6, a.vip6])
        port = self.rng.choice([8080, 22, 443, 9]) if dst != a.vip6 else a.port + 1
        return dst, port


def patch16(b, off, val):
    return b[:off] + struct.pack("!H", val) + b[off + 2 :]


def checksum(data):
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def get16(b, off):
    return struct.unpack("!H", b[off : off + 2])[0]


# Offsets of the checksum fields from the transport header.
TCP_CSUM, UDP_CSUM = 16, 6


def flow(proto, src, sport, dst, dport, real):
    return f"{proto}|{src}|{sport}|{dst}|{dport}|{1 if real else 0}"


def one(frame, *expect, flow_=None):
    return (bytes(frame), list(expect), flow_)


# ---------------------------------------------------------------- IPv4 header


def v4_truncated_header(c, n):
    """Ethernet + 0..19 bytes of an IPv4 header."""
    out = []
    for _ in range(n):
        dst, port = c.non_service4() if c.rng.random() < 0.5 else (c.a.vip, c.a.port)
        b = raw(c.v4(dst) / TCP(sport=c.rport(), dport=port, flags="S"))
        out.append(one(b[: ETH + c.rng.randrange(0, 20)], "drop:truncated"))
    return out


def v4_bad_version(c, n):
    out = []
    for _ in range(n):
        ver = c.rng.choice([v for v in range(16) if v != 4])
        b = raw(c.v4(c.a.vip, version=ver) / TCP(sport=c.rport(), dport=c.a.port, flags="S"))
        out.append(one(b, "drop:bad_ip_version"))
    return out


def v4_ihl_below_5(c, n):
    out = []
    for _ in range(n):
        dst = c.rng.choice([c.a.vip] + c.a.others)
        b = raw(c.v4(dst, ihl=c.rng.randrange(0, 5)) / TCP(sport=c.rport(), dport=c.a.port))
        out.append(one(b, "drop:bad_ip_header_length"))
    return out


def v4_ihl_beyond_total_length(c, n):
    """IHL 6..15 with a total length shorter than the header it announces."""
    out = []
    for _ in range(n):
        ihl = c.rng.randrange(6, 16)
        tot = c.rng.randrange(20, ihl * 4)
        pay = TCP(sport=c.rport(), dport=c.a.port) / Raw(c.junk(c.rng.randrange(0, 48)))
        b = raw(c.v4(c.rng.choice([c.a.vip] + c.a.others), ihl=ihl, len=tot) / pay)
        out.append(one(b, "drop:bad_ip_total_length"))
    return out


def v4_ihl_beyond_frame(c, n):
    """IHL 6..15, total length consistent with it, but the frame ends inside the datagram."""
    out = []
    for _ in range(n):
        ihl = c.rng.randrange(6, 16)
        tot = ihl * 4 + 20
        b = raw(c.v4(c.a.vip, ihl=ihl, len=tot) / TCP(sport=c.rport(), dport=c.a.port))
        # The frame holds 20 bytes of IP header and the TCP header: less than `tot`.
        assert len(b) - ETH < tot
        out.append(one(b, "drop:truncated"))
    return out


def v4_total_length_below_header(c, n):
    out = []
    for _ in range(n):
        b = raw(
            c.v4(c.rng.choice([c.a.vip] + c.a.others), len=c.rng.randrange(0, 20))
            / TCP(sport=c.rport(), dport=c.a.port)
        )
        out.append(one(b, "drop:bad_ip_total_length"))
    return out


def v4_total_length_beyond_frame(c, n):
    out = []
    for _ in range(n):
        pay = c.junk(c.rng.randrange(0, 64))
        l4 = c.rng.choice([TCP(sport=c.rport(), dport=c.a.port), UDP(sport=c.rport(), dport=c.a.port)])
        real_len = 20 + len(raw(l4 / Raw(pay)))
        tot = min(real_len + c.rng.randrange(1, 1400), 0xFFFF)
        b = raw(c.v4(c.rng.choice([c.a.vip] + c.a.others), len=tot) / l4 / Raw(pay))
        out.append(one(b, "drop:truncated"))
    return out


def v4_total_length_cuts_transport(c, n):
    """The frame holds a whole TCP/UDP header, the IPv4 total length ends before it does."""
    out = []
    for _ in range(n):
        if c.rng.random() < 0.5:
            l4, short = TCP(sport=c.rport(), dport=c.a.port, flags="S"), c.rng.randrange(0, 20)
        else:
            l4, short = UDP(sport=c.rport(), dport=c.a.port) / Raw(b"x"), c.rng.randrange(0, 8)
        b = raw(c.v4(c.a.vip, len=20 + short) / l4)
        out.append(one(b, "drop:truncated"))
    return out


def v4_trailer_after_datagram(c, n):
    """A good TCP SYN followed by bytes past its total length (Ethernet padding, garbage)."""
    out = []
    for _ in range(n):
        trailer = c.junk(c.rng.randrange(1, 41))
        if c.rng.random() < 0.5:
            sport = c.flow_port()
            b = raw(c.v4(c.a.vip) / TCP(sport=sport, dport=c.a.port, flags="S")) + trailer
            f = flow(6, c.a.client, sport, c.a.vip, c.a.port, True)
            out.append(one(b, "service_new_flow", flow_=f))
        else:
            dst, port = c.non_service4()
            b = raw(c.v4(dst) / TCP(sport=c.rport(), dport=port, flags="S")) + trailer
            out.append(one(b, "pass_not_service"))
    return out


def v4_bad_header_checksum(c, n):
    """A TCP SYN to the VIP whose IPv4 header checksum is wrong: the stack would discard it
    before routing, so the datapath drops it and starts no flow."""
    out = []
    for _ in range(n):
        sport = c.flow_port()
        b = raw(c.v4(c.a.vip) / TCP(sport=sport, dport=c.a.port, flags="S"))
        b = patch16(b, ETH + 10, get16(b, ETH + 10) ^ c.rng.randrange(1, 0x10000))
        out.append(one(b, "drop:bad_ip_checksum"))
    return out


def v4_garbage_options(c, n):
    """IHL 6..15 with random option bytes (never a DSR carrier's type), to no service."""
    out = []
    for _ in range(n):
        opts = bytes(x if x != 0x9A else 0x01 for x in c.junk(4 * c.rng.randrange(1, 11)))
        dst, port = c.non_service4()
        ip = IP(src=c.a.client, dst=c.check(dst), ihl=5 + len(opts) // 4, proto=6)
        b = raw(c.ether() / ip / Raw(b""))
        # Insert the options by hand (scapy would parse and "fix" them) and patch the length.
        tcp = raw(TCP(sport=c.rport(), dport=port, flags="S"))
        ipb = bytearray(b[ETH : ETH + 20] + opts + tcp)
        struct.pack_into("!H", ipb, 2, len(ipb))
        struct.pack_into("!H", ipb, 10, 0)
        struct.pack_into("!H", ipb, 10, checksum(bytes(ipb[: 20 + len(opts)])))
        out.append(one(b[:ETH] + bytes(ipb), "pass_not_service"))
    return out


# ---------------------------------------------------------------- IPv4 transport


def v4_tcp_truncated(c, n):
    out = []
    for _ in range(n):
        t = raw(TCP(sport=c.rport(), dport=c.a.port, flags="S"))[: c.rng.randrange(0, 20)]
        b = raw(c.v4(c.rng.choice([c.a.vip] + c.a.others), proto=6) / Raw(t))
        out.append(one(b, "drop:truncated"))
    return out


def v4_tcp_data_offset_below_5(c, n):
    out = []
    for _ in range(n):
        doff = c.rng.randrange(0, 5)
        b = raw(c.v4(c.rng.choice([c.a.vip] + c.a.others)) / TCP(sport=c.rport(), dport=c.a.port, dataofs=doff))
        out.append(one(b, "drop:bad_tcp_header_length"))
    return out


def v4_tcp_data_offset_past_end(c, n):
    out = []
    for _ in range(n):
        doff = c.rng.randrange(6, 16)
        extra = c.junk(c.rng.randrange(0, doff * 4 - 20))
        b = raw(c.v4(c.a.vip) / TCP(sport=c.rport(), dport=c.a.port, dataofs=doff) / Raw(extra))
        out.append(one(b, "drop:truncated"))
    return out


def v4_udp_truncated(c, n):
    out = []
    for _ in range(n):
        u = raw(UDP(sport=c.rport(), dport=c.a.port) / Raw(b"xy"))[: c.rng.randrange(0, 8)]
        b = raw(c.v4(c.rng.choice([c.a.vip] + c.a.others), proto=17) / Raw(u))
        out.append(one(b, "drop:truncated"))
    return out


def v4_udp_length_below_8(c, n):
    out = []
    for _ in range(n):
        b = raw(
            c.v4(c.rng.choice([c.a.vip] + c.a.others))
            / UDP(sport=c.rport(), dport=c.a.port, len=c.rng.randrange(0, 8))
            / Raw(c.junk(c.rng.randrange(0, 16)))
        )
        out.append(one(b, "drop:bad_udp_length"))
    return out


def v4_udp_length_past_end(c, n):
    """UDP length beyond the IP payload: the parser reports it as truncated."""
    out = []
    for _ in range(n):
        pay = c.junk(c.rng.randrange(0, 32))
        ulen = 8 + len(pay) + c.rng.randrange(1, 200)
        b = raw(c.v4(c.rng.choice([c.a.vip] + c.a.others)) / UDP(sport=c.rport(), dport=c.a.port, len=ulen) / Raw(pay))
        out.append(one(b, "drop:truncated"))
    return out


# ---------------------------------------------------------------- checksums


def checksum_frames(c, n, family, proto, kind):
    """Frames to the VIP with a bad or zero TCP/UDP checksum, each a flow of its own, and (a
    quarter) to no service. A zero UDP checksum over IPv4 means "none": that flow is real."""
    out = []
    v6 = family == 6
    l4off = ETH + (40 if v6 else 20)
    off = l4off + (TCP_CSUM if proto == 6 else UDP_CSUM)
    for _ in range(n):
        to_service = c.rng.random() < 0.75
        for _try in range(8):
            sport = c.flow_port() if to_service else c.rport()
            if to_service:
                dst, port = (c.a.vip6, c.a.port) if v6 else (c.a.vip, c.a.port)
            else:
                dst, port = c.non_service6() if v6 else c.non_service4()
            if proto == 6:
                flags = c.rng.choice(["S", "S", "A", "R", "FA", "PA", ""])
                l4 = TCP(sport=sport, dport=port, flags=flags) / Raw(c.junk(c.rng.randrange(0, 32)))
            else:
                l4 = UDP(sport=sport, dport=port) / Raw(c.junk(c.rng.randrange(0, 32)))
            b = raw((c.v6(dst) if v6 else c.v4(dst)) / l4)
            good = get16(b, off)
            if kind == "zero" and good == 0:
                continue  # the correct checksum is zero: not a zero-checksum case
            break
        bad = 0 if kind == "zero" else good ^ c.rng.randrange(1, 0x10000)
        if proto == 17 and kind == "bad" and bad == 0:
            bad = good ^ 0x0101  # zero means "no checksum" for UDP: keep it a wrong one
        b = patch16(b, off, bad)
        real = proto == 17 and kind == "zero" and not v6
        src = c.a.client6 if v6 else c.a.client
        if to_service and proto == 17 and kind == "zero" and v6:
            # IPv6 forbids a zero UDP checksum: no flow for it.
            out.append(one(b, "drop:zero_udp_checksum_v6"))
        elif to_service:
            out.append(one(b, "service_new_flow", flow_=flow(proto, src, sport, dst, port, real)))
        else:
            out.append(one(b, "pass_not_service"))
    return out


def good_flows(c, n):
    """The control: well-formed SYNs and datagrams to the VIPs (real flows) and elsewhere."""
    out = []
    for _ in range(n):
        v6 = c.rng.random() < 0.5
        proto = c.rng.choice([6, 17])
        to_service = c.rng.random() < 0.7
        sport = c.flow_port() if to_service else c.rport()
        if to_service:
            dst, port = (c.a.vip6 if v6 else c.a.vip), c.a.port
        else:
            dst, port = c.non_service6() if v6 else c.non_service4()
        l4 = TCP(sport=sport, dport=port, flags="S") if proto == 6 else UDP(sport=sport, dport=port) / Raw(b"hello")
        b = raw((c.v6(dst) if v6 else c.v4(dst)) / l4)
        if to_service:
            src = c.a.client6 if v6 else c.a.client
            out.append(one(b, "service_new_flow", flow_=flow(proto, src, sport, dst, port, True)))
        else:
            out.append(one(b, "pass_not_service"))
    return out


# ---------------------------------------------------------------- IPv4 fragments


def v4_overlapping_fragments(c, n):
    """Groups of three: a first fragment with the whole TCP header, then later fragments whose
    offsets overlap it and each other. The datapath passes fragments to the stack."""
    out = []
    while len(out) < n:
        dst = c.rng.choice([c.a.vip] + c.a.others)
        ident = c.rng.randrange(0, 0x10000)
        tcp = raw(TCP(sport=c.rport(), dport=c.a.port, flags="S") / Raw(c.junk(c.rng.randrange(8, 40))))
        out.append(one(raw(c.v4(dst, id=ident, flags="MF", frag=0, proto=6) / Raw(tcp)), "pass_fragment"))
        for last in (False, True):
            off = c.rng.randrange(1, 4)
            b = raw(c.v4(dst, id=ident, flags=0 if last else "MF", frag=off, proto=6) / Raw(c.junk(c.rng.randrange(1, 40))))
            out.append(one(b, "pass_fragment"))
    return out[:n]


def v4_tiny_first_fragments(c, n):
    """First fragments too short for the transport header (RFC 1858's tiny fragments): TCP with
    0..19 bytes and UDP with 0..7 are truncated; UDP with its 8-byte header passes."""
    out = []
    for _ in range(n):
        dst = c.rng.choice([c.a.vip] + c.a.others)
        r = c.rng.random()
        if r < 0.5:
            t = raw(TCP(sport=c.rport(), dport=c.a.port, flags="S"))[: c.rng.randrange(0, 20)]
            out.append(one(raw(c.v4(dst, flags="MF", frag=0, proto=6) / Raw(t)), "drop:truncated"))
        elif r < 0.75:
            u = raw(UDP(sport=c.rport(), dport=c.a.port) / Raw(c.junk(64)))[: c.rng.randrange(0, 8)]
            out.append(one(raw(c.v4(dst, flags="MF", frag=0, proto=17) / Raw(u)), "drop:truncated"))
        else:
            u = raw(UDP(sport=c.rport(), dport=c.a.port) / Raw(c.junk(64)))[:8]
            out.append(one(raw(c.v4(dst, flags="MF", frag=0, proto=17) / Raw(u)), "pass_fragment"))
    return out


def v4_tiny_later_fragments(c, n):
    out = []
    for _ in range(n):
        dst = c.rng.choice([c.a.vip] + c.a.others)
        b = raw(
            c.v4(dst, flags=c.rng.choice([0, "MF", "DF+MF"]), frag=c.rng.randrange(1, 8192), proto=c.rng.choice([6, 17]))
            / Raw(c.junk(c.rng.randrange(0, 9)))
        )
        out.append(one(b, "pass_fragment"))
    return out


# ---------------------------------------------------------------- IPv6


def v6_tcp(c, dst, port, sport=None, flags="S"):
    return TCP(sport=sport or c.rport(), dport=port, flags=flags)


def v6_truncated_header(c, n):
    out = []
    for _ in range(n):
        b = raw(c.v6(c.a.vip6) / v6_tcp(c, c.a.vip6, c.a.port))
        out.append(one(b[: ETH + c.rng.randrange(0, 40)], "drop:truncated"))
    return out


def v6_bad_version(c, n):
    out = []
    for _ in range(n):
        b = raw(c.v6(c.a.vip6, version=c.rng.choice([v for v in range(16) if v != 6])) / v6_tcp(c, c.a.vip6, c.a.port))
        out.append(one(b, "drop:bad_ip_version"))
    return out


def v6_payload_length_beyond_frame(c, n):
    out = []
    for _ in range(n):
        pay = c.junk(c.rng.randrange(0, 64))
        l4 = raw(v6_tcp(c, c.a.vip6, c.a.port) / Raw(pay))
        plen = len(l4) + c.rng.randrange(1, 1400)
        b = raw(c.v6(c.rng.choice([c.a.vip6] + c.a.others6), plen=plen, nh=6) / Raw(l4))
        out.append(one(b, "drop:truncated"))
    return out


def v6_payload_length_cuts_transport(c, n):
    out = []
    for _ in range(n):
        if c.rng.random() < 0.5:
            l4, nh, short = raw(v6_tcp(c, c.a.vip6, c.a.port)), 6, c.rng.randrange(0, 20)
        else:
            l4, nh, short = raw(UDP(sport=c.rport(), dport=c.a.port) / Raw(b"x")), 17, c.rng.randrange(0, 8)
        b = raw(c.v6(c.a.vip6, plen=short, nh=nh) / Raw(l4))
        out.append(one(b, "drop:truncated"))
    return out


def v6_transport_malformed(c, n):
    """IPv6 with a cut TCP or UDP header, a TCP data offset below 5 or past the end, or a UDP
    length below 8."""
    out = []
    for _ in range(n):
        dst = c.rng.choice([c.a.vip6] + c.a.others6)
        k = c.rng.randrange(0, 5)
        if k == 0:
            t = raw(v6_tcp(c, dst, c.a.port))[: c.rng.randrange(0, 20)]
            out.append(one(raw(c.v6(dst, nh=6) / Raw(t)), "drop:truncated"))
        elif k == 1:
            u = raw(UDP(sport=c.rport(), dport=c.a.port))[: c.rng.randrange(0, 8)]
            out.append(one(raw(c.v6(dst, nh=17) / Raw(u)), "drop:truncated"))
        elif k == 2:
            t = TCP(sport=c.rport(), dport=c.a.port, dataofs=c.rng.randrange(0, 5))
            out.append(one(raw(c.v6(dst) / t), "drop:bad_tcp_header_length"))
        elif k == 3:
            doff = c.rng.randrange(6, 16)
            t = TCP(sport=c.rport(), dport=c.a.port, dataofs=doff) / Raw(c.junk(c.rng.randrange(0, doff * 4 - 20)))
            out.append(one(raw(c.v6(dst) / t), "drop:truncated"))
        else:
            u = UDP(sport=c.rport(), dport=c.a.port, len=c.rng.randrange(0, 8)) / Raw(c.junk(8))
            out.append(one(raw(c.v6(dst) / u), "drop:bad_udp_length"))
    return out


def ext_header(c, kind):
    if kind == 0:
        return IPv6ExtHdrHopByHop()
    if kind == 60:
        return IPv6ExtHdrDestOpt()
    return IPv6ExtHdrFragment(offset=0, m=0, id=c.rng.randrange(0, 1 << 32))  # atomic


def ext_chain(c, count):
    """`count` extension headers: hop-by-hop (first only), destination options, and at most one
    atomic fragment header (hosts answer a second one with an ICMPv6 parameter problem, which
    the TC programs would count when they see the quote)."""
    kinds = []
    for i in range(count):
        kinds.append(c.rng.choice([0, 60, 44] if i == 0 else [60, 44]))
        if kinds[-1] == 44 and 44 in kinds[:-1]:
            kinds[-1] = 60
    layers = None
    for k in kinds:
        h = ext_header(c, k)
        layers = h if layers is None else layers / h
    return layers


def v6_ext_chain_past_bound(c, n, bound):
    """More extension headers than the parser follows: it passes them to the stack."""
    out = []
    for _ in range(n):
        count = c.rng.randrange(bound + 1, bound + 5)
        to_vip = c.rng.random() < 0.5
        dst, port = (c.a.vip6, c.a.port) if to_vip else c.non_service6()
        b = raw(c.v6(dst) / ext_chain(c, count) / v6_tcp(c, dst, port))
        out.append(one(b, "pass_headers_too_deep"))
    return out


def v6_ext_chain_at_bound(c, n, bound):
    """Exactly as many extension headers as the parser follows: a well-formed packet."""
    out = []
    for _ in range(n):
        count = c.rng.randrange(1, bound + 1)
        if c.rng.random() < 0.5:
            sport = c.flow_port()
            b = raw(c.v6(c.a.vip6) / ext_chain(c, count) / v6_tcp(c, c.a.vip6, c.a.port, sport=sport))
            f = flow(6, c.a.client6, sport, c.a.vip6, c.a.port, True)
            out.append(one(b, "service_new_flow", flow_=f))
        else:
            dst, port = c.non_service6()
            b = raw(c.v6(dst) / ext_chain(c, count) / v6_tcp(c, dst, port))
            out.append(one(b, "pass_not_service"))
    return out


def v6_ext_headers_malformed(c, n):
    """Hop-by-hop after the first header; an extension header running past the payload; a
    chain whose transport header starts past the parser's 512-byte bound."""
    out = []
    for _ in range(n):
        dst = c.rng.choice([c.a.vip6] + c.a.others6)
        k = c.rng.randrange(0, 3)
        if k == 0:
            chain = IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()
            if c.rng.random() < 0.5:
                chain = IPv6ExtHdrDestOpt() / chain
            out.append(one(raw(c.v6(dst) / chain / v6_tcp(c, dst, c.a.port)), "drop:bad_ipv6_ext_header"))
        elif k == 1:
            # A destination options header announcing up to 2 KiB, of which only 8..40 bytes exist.
            h = bytearray(raw(IPv6ExtHdrDestOpt(nh=6, options=[PadN(optdata=b"\0" * 4)])))
            h[1] = c.rng.randrange(6, 255)
            body = bytes(h) + c.junk(c.rng.randrange(0, 33))
            out.append(one(raw(c.v6(dst, nh=60) / Raw(body)), "drop:truncated"))
        else:
            # Two 256-byte destination options headers: what follows starts at offset 566 > 512.
            big = IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 252)])
            tail = IPv6ExtHdrDestOpt() if c.rng.random() < 0.5 else None
            pkt = c.v6(dst) / big / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 252)])
            if tail is not None:
                pkt = pkt / tail
            out.append(one(raw(pkt / v6_tcp(c, dst, c.a.port)), "pass_headers_too_deep"))
    return out


def v6_fragments(c, n):
    """Overlapping and tiny IPv6 fragments, and atomic fragments (offset 0, no more): those are
    whole packets, and one to the VIP starts a flow."""
    out = []
    while len(out) < n:
        dst = c.rng.choice([c.a.vip6] + c.a.others6)
        ident = c.rng.randrange(0, 1 << 32)
        k = c.rng.randrange(0, 5)
        if k == 0:
            # Overlapping: a first fragment with the TCP header, two later ones overlapping it.
            tcp = raw(v6_tcp(c, dst, c.a.port) / Raw(c.junk(c.rng.randrange(8, 40))))
            out.append(one(raw(c.v6(dst) / IPv6ExtHdrFragment(offset=0, m=1, id=ident, nh=6) / Raw(tcp)), "pass_fragment"))
            for m in (1, 0):
                frag = IPv6ExtHdrFragment(offset=c.rng.randrange(1, 4), m=m, id=ident, nh=6)
                out.append(one(raw(c.v6(dst) / frag / Raw(c.junk(c.rng.randrange(1, 40)))), "pass_fragment"))
        elif k == 1:
            # Tiny first fragment: part of a TCP header, or part of a UDP header.
            if c.rng.random() < 0.5:
                t = raw(v6_tcp(c, dst, c.a.port))[: c.rng.randrange(0, 20)]
                nh = 6
            else:
                t = raw(UDP(sport=c.rport(), dport=c.a.port))[: c.rng.randrange(0, 8)]
                nh = 17
            frag = IPv6ExtHdrFragment(offset=0, m=1, id=ident, nh=nh)
            out.append(one(raw(c.v6(dst) / frag / Raw(t)), "drop:truncated"))
        elif k == 2:
            # Tiny later fragment.
            frag = IPv6ExtHdrFragment(offset=c.rng.randrange(1, 8192), m=c.rng.randrange(0, 2), id=ident, nh=6)
            out.append(one(raw(c.v6(dst) / frag / Raw(c.junk(c.rng.randrange(0, 9)))), "pass_fragment"))
        elif k == 3:
            # The fragment header itself cut short.
            h = raw(IPv6ExtHdrFragment(offset=0, m=1, id=ident, nh=6))[: c.rng.randrange(0, 8)]
            out.append(one(raw(c.v6(dst, nh=44) / Raw(h)), "drop:truncated"))
        else:
            # Atomic fragment: a whole packet with a fragment header.
            if c.rng.random() < 0.5:
                sport = c.flow_port()
                frag = IPv6ExtHdrFragment(offset=0, m=0, id=ident)
                b = raw(c.v6(c.a.vip6) / frag / v6_tcp(c, c.a.vip6, c.a.port, sport=sport))
                f = flow(6, c.a.client6, sport, c.a.vip6, c.a.port, True)
                out.append(one(b, "service_new_flow", flow_=f))
            else:
                d, port = c.non_service6()
                b = raw(c.v6(d) / IPv6ExtHdrFragment(offset=0, m=0, id=ident) / v6_tcp(c, d, port))
                out.append(one(b, "pass_not_service"))
    return out[:n]


# ---------------------------------------------------------------- VLAN, not IP


def vlan_frames(c, n):
    out = []
    for _ in range(n):
        inner = raw(IP(src=c.a.client, dst=c.check(c.a.vip)) / TCP(sport=c.rport(), dport=c.a.port, flags="S"))
        tag = lambda tpid: struct.pack("!H", tpid)  # noqa: E731
        tci = lambda: struct.pack("!H", c.rng.randrange(1, 4095))  # noqa: E731
        macs = raw(c.ether())[:12]
        if c.rng.random() < 0.5:
            # Three tags: more than the parser follows.
            b = macs + tag(0x88A8) + tci() + tag(0x8100) + tci() + tag(0x8100) + tci() + tag(0x0800) + inner
            out.append(one(b, "pass_headers_too_deep"))
        else:
            # A tag cut short.
            b = macs + tag(0x8100) + tci()[: c.rng.randrange(0, 2)]
            out.append(one(b, "drop:truncated"))
    return out


def not_ip(c, n):
    out = []
    for _ in range(n):
        et = c.rng.choice([0x0806, 0x88B5, 0x88B6, 0x88CC, 0x1234, 0x0000, 0xFFFF, 0x0600])
        b = raw(c.ether())[:12] + struct.pack("!H", et) + c.junk(c.rng.randrange(0, 64))
        out.append(one(b, "pass_not_ip"))
    return out


# ---------------------------------------------------------------- VXLAN


def vxlan_header(flags, vni):
    return struct.pack("!B3xI", flags, vni << 8)


def vxlan_frame(c, inner, flags=0x08, vni=None, src=None, dst=None, v6=False, udp_csum=None):
    a = c.a
    vni = a.vni if vni is None else vni
    sport = c.rng.randrange(49152, 65536)
    if v6:
        pkt = c.v6(dst or a.node6, src=src or a.client6) / UDP(sport=sport, dport=a.tunnel_port, chksum=udp_csum)
    else:
        pkt = c.v4(dst or a.node, src=src or a.client) / UDP(sport=sport, dport=a.tunnel_port, chksum=udp_csum)
    return raw(pkt / Raw(vxlan_header(flags, vni) + inner))


def inner_ether(c, et, body):
    macs = bytes([0x02]) + c.junk(5) + bytes([0x02]) + c.junk(5)
    return macs + struct.pack("!H", et) + body


def vxlan_garbage(c, n):
    """VXLAN from the peer node (the client is configured as one) to the node's tunnel port with
    garbage: no I flag, another VNI, a header or an inner frame cut short, an inner frame that is
    not IP or whose IPv4 header is malformed. Also from an unknown node, and to the VIP's and a
    backend's port 4789, which are no tunnel endpoint."""
    out = []
    a = c.a
    for _ in range(n):
        k = c.rng.randrange(0, 10)
        junk_inner = inner_ether(c, 0x88B5, c.junk(c.rng.randrange(0, 40)))
        if k == 0:
            f = c.rng.choice([x for x in range(256) if not x & 0x08])
            out.append(one(vxlan_frame(c, junk_inner, flags=f), "drop:bad_tunnel_header"))
        elif k == 1:
            vni = c.rng.choice([v for v in (0, 2, 3, 42, 0xFFFFFF) if v != a.vni])
            out.append(one(vxlan_frame(c, junk_inner, vni=vni), "drop:bad_tunnel_header"))
        elif k == 2:
            # The VXLAN header cut short: the UDP payload is 0..7 bytes.
            b = raw(c.v4(a.node) / UDP(sport=c.rport(), dport=a.tunnel_port) / Raw(vxlan_header(8, a.vni)[: c.rng.randrange(0, 8)]))
            out.append(one(b, "drop:bad_tunnel_header"))
        elif k == 3:
            # An inner frame shorter than an Ethernet header.
            out.append(one(vxlan_frame(c, c.junk(c.rng.randrange(0, 14))), "drop:bad_tunnel_header"))
        elif k == 4:
            et = c.rng.choice([0x0806, 0x88B5, 0x1234, 0x0000])
            inner = inner_ether(c, et, c.junk(c.rng.randrange(0, 64)))
            out.append(one(vxlan_frame(c, inner), "tunnel_decapsulated", "pass_not_ip"))
        elif k == 5:
            ip = bytearray(raw(IP(src=a.client, dst=c.check(a.vip)) / TCP(sport=c.rport(), dport=a.port)))
            ip[0] = 0x40 | c.rng.randrange(0, 5)
            inner = inner_ether(c, 0x0800, bytes(ip))
            out.append(one(vxlan_frame(c, inner), "tunnel_decapsulated", "drop:bad_ip_header_length"))
        elif k == 6:
            ip = raw(IP(src=a.client, dst=c.check(a.vip)) / TCP(sport=c.rport(), dport=a.port))
            inner = inner_ether(c, 0x0800, ip[: c.rng.randrange(0, 20)])
            out.append(one(vxlan_frame(c, inner), "tunnel_decapsulated", "drop:truncated"))
        elif k == 7:
            out.append(one(vxlan_frame(c, junk_inner, src=a.stranger), "drop:tunnel_from_unknown_node"))
        elif k == 8:
            dst = c.rng.choice([a.vip] + a.others)
            out.append(one(vxlan_frame(c, junk_inner, dst=dst), "pass_not_service"))
        else:
            # IPv6 outer: a zero UDP checksum is invalid; a valid one decapsulates.
            if c.rng.random() < 0.5:
                out.append(one(vxlan_frame(c, junk_inner, v6=True, udp_csum=0), "drop:bad_tunnel_header"))
            else:
                out.append(one(vxlan_frame(c, junk_inner, v6=True), "tunnel_decapsulated", "pass_not_ip"))
    return out


def vxlan_inner_frame_past_datagram(c, n):
    """The outer IPv4 and UDP lengths end right after the VXLAN header; an "inner frame" follows
    in bytes past the outer datagram's end. The datagram holds no inner frame (a receiver trims
    the frame to the IP total length first), so the tunnel header is bad."""
    out = []
    for _ in range(n):
        b = raw(c.v4(c.a.node) / UDP(sport=c.rport(), dport=c.a.tunnel_port) / Raw(vxlan_header(8, c.a.vni)))
        trailer = inner_ether(c, 0x88B5, c.junk(c.rng.randrange(0, 30)))
        out.append(one(b + trailer, "drop:bad_tunnel_header"))
    return out


# ---------------------------------------------------------------- the run


def categories(bound):
    # (name, weight, builder)
    return [
        ("good_flows", 80, good_flows),
        ("v4_truncated_header", 100, v4_truncated_header),
        ("v4_bad_version", 40, v4_bad_version),
        ("v4_ihl_below_5", 100, v4_ihl_below_5),
        ("v4_ihl_beyond_total_length", 100, v4_ihl_beyond_total_length),
        ("v4_ihl_beyond_frame", 80, v4_ihl_beyond_frame),
        ("v4_total_length_below_header", 80, v4_total_length_below_header),
        ("v4_total_length_beyond_frame", 100, v4_total_length_beyond_frame),
        ("v4_total_length_cuts_transport", 100, v4_total_length_cuts_transport),
        ("v4_trailer_after_datagram", 80, v4_trailer_after_datagram),
        ("v4_bad_header_checksum", 60, v4_bad_header_checksum),
        ("v4_garbage_options", 60, v4_garbage_options),
        ("v4_tcp_truncated", 100, v4_tcp_truncated),
        ("v4_tcp_data_offset_below_5", 100, v4_tcp_data_offset_below_5),
        ("v4_tcp_data_offset_past_end", 100, v4_tcp_data_offset_past_end),
        ("v4_udp_truncated", 80, v4_udp_truncated),
        ("v4_udp_length_below_8", 100, v4_udp_length_below_8),
        ("v4_udp_length_past_end", 80, v4_udp_length_past_end),
        ("v4_tcp_bad_checksum", 100, lambda c, n: checksum_frames(c, n, 4, 6, "bad")),
        ("v4_tcp_zero_checksum", 80, lambda c, n: checksum_frames(c, n, 4, 6, "zero")),
        ("v4_udp_bad_checksum", 100, lambda c, n: checksum_frames(c, n, 4, 17, "bad")),
        ("v4_udp_zero_checksum", 80, lambda c, n: checksum_frames(c, n, 4, 17, "zero")),
        ("v4_overlapping_fragments", 150, v4_overlapping_fragments),
        ("v4_tiny_first_fragments", 100, v4_tiny_first_fragments),
        ("v4_tiny_later_fragments", 80, v4_tiny_later_fragments),
        ("v6_truncated_header", 80, v6_truncated_header),
        ("v6_bad_version", 40, v6_bad_version),
        ("v6_payload_length_beyond_frame", 80, v6_payload_length_beyond_frame),
        ("v6_payload_length_cuts_transport", 80, v6_payload_length_cuts_transport),
        ("v6_transport_malformed", 150, v6_transport_malformed),
        ("v6_tcp_bad_checksum", 80, lambda c, n: checksum_frames(c, n, 6, 6, "bad")),
        ("v6_tcp_zero_checksum", 60, lambda c, n: checksum_frames(c, n, 6, 6, "zero")),
        ("v6_udp_bad_checksum", 80, lambda c, n: checksum_frames(c, n, 6, 17, "bad")),
        ("v6_udp_zero_checksum", 60, lambda c, n: checksum_frames(c, n, 6, 17, "zero")),
        ("v6_ext_chain_past_bound", 120, lambda c, n: v6_ext_chain_past_bound(c, n, bound)),
        ("v6_ext_chain_at_bound", 80, lambda c, n: v6_ext_chain_at_bound(c, n, bound)),
        ("v6_ext_headers_malformed", 120, v6_ext_headers_malformed),
        ("v6_fragments", 200, v6_fragments),
        ("vlan", 60, vlan_frames),
        ("not_ip", 60, not_ip),
        ("vxlan_garbage", 250, vxlan_garbage),
        ("vxlan_inner_frame_past_datagram", 40, vxlan_inner_frame_past_datagram),
    ]


def wait_next(timeout):
    r, _, _ = select.select([sys.stdin], [], [], timeout)
    if not r:
        raise SystemExit("no answer from the test within the timeout")
    line = sys.stdin.readline()
    if line.strip() != "NEXT":
        raise SystemExit(f"the test said {line.strip()!r}, not NEXT: stopping")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iface", required=True)
    p.add_argument("--src-mac", required=True)
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--frames", type=int, default=4000, help="about this many in all (at most 10000)")
    p.add_argument("--client", required=True)
    p.add_argument("--client6", required=True)
    p.add_argument("--stranger", required=True, help="a source address that is no peer node")
    p.add_argument("--node", required=True)
    p.add_argument("--node6", required=True)
    p.add_argument("--vip", required=True)
    p.add_argument("--vip6", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--others", type=lambda s: s.split(","), required=True)
    p.add_argument("--others6", type=lambda s: s.split(","), required=True)
    p.add_argument("--vni", type=int, default=1)
    p.add_argument("--tunnel-port", type=int, default=4789)
    p.add_argument("--ext-bound", type=int, required=True, help="MAX_IPV6_EXT_HEADERS")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the test")
    p.add_argument("--dry-run", action="store_true", help="build and describe, send nothing")
    p.add_argument("--show", metavar="CATEGORY", help="with --dry-run: print that category's frames in hex")
    p.add_argument("--only", metavar="CATEGORY,...", help="send only these categories (to look into one)")
    a = p.parse_args()
    if not 1 <= a.frames <= 10000:
        raise SystemExit("--frames must be within 1..=10000")
    c = Ctx(a)
    cats = categories(a.ext_bound)
    total_w = sum(w for _, w, _ in cats)
    built = []
    for name, w, fn in cats:
        # Built even when not sent, so that the random sequence, hence every frame, stays the same.
        frames = fn(c, max(1, round(a.frames * w / total_w)))
        if a.only is None or name in a.only.split(","):
            built.append((name, frames))
    print(f"READY {len(built)} {sum(len(f) for _, f in built)}", flush=True)
    for name, frames in built:
        if a.dry_run and a.show == name:
            for i, (b, keys, f) in enumerate(frames):
                print(f"# {name}[{i}] {'+'.join(keys)} {f or ''} {b.hex()}")
        if not a.dry_run:
            sendp([Raw(load=b) for b, _, _ in frames], iface=a.iface, inter=0, verbose=False)
        expect = {}
        for _, keys, _ in frames:
            for k in keys:
                expect[k] = expect.get(k, 0) + 1
        flows = [f for _, _, f in frames if f is not None]
        spec = ",".join(f"{k}={v}" for k, v in sorted(expect.items()))
        print(f"SENT {name} {len(frames)} {spec} {';'.join(flows) or '-'}", flush=True)
        if not a.dry_run:
            wait_next(a.timeout)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
