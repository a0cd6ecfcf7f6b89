"""Send the first fragment only of an ICMP echo to each address given (for record.py's
defrag-timeout case: the rest never comes, the reassembly queue expires)."""

import sys

from scapy.all import ICMP, IP, send

for address in sys.argv[1:]:
    send(IP(dst=address, id=7, flags="MF") / ICMP(id=5) / (b"x" * 96), verbose=0)
