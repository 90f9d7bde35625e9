"""Third-party HL7 peers for mllp-proxy's interop tests.

  peers.py engine            hl7apy MLLP server on 127.0.0.1 (port printed on stdout); it ACKs
                             with an ACK built by hl7apy and, like hl7apy's server always does,
                             closes the connection after each message.
  peers.py client HOST PORT CA CERT KEY COUNT
                             python-hl7 asyncio MLLP client over mutual TLS; sends COUNT
                             messages and checks each ACK (AA, MSA-2 = MSH-10).
  peers.py parse-nak FILE    parses a NAK (raw bytes) with python-hl7 and hl7apy and prints
                             MSA-1, MSA-2 and the ERR code read by each.
  peers.py engine LOG        the same hl7apy engine, appending each ACK it writes (one JSON
                             line: control ID and ACK) to LOG.
  peers.py hl7-engine LOG    python-hl7's asyncio MLLP server as the engine: AA to each message
                             (its create_ack), each ACK written appended to LOG as above;
                             keeps the connection open.
  peers.py plain-client HOST PORT COUNT PREFIX
                             python-hl7 asyncio MLLP client over plain TCP (a local engine
                             feeding an egress route); prints each raw ACK as a JSON line.
"""

import asyncio
import json
import ssl
import sys
import threading


def record(log, control_id, ack):
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"control_id": control_id, "ack": ack}) + "\n")


def engine(log=None):
    from hl7apy.core import Message
    from hl7apy.mllp import AbstractHandler, MLLPServer
    from hl7apy.parser import parse_message

    class AckHandler(AbstractHandler):
        def reply(self):
            incoming = parse_message(self.incoming_message, find_groups=False)
            msh = incoming.msh
            ack = Message("ACK", version=msh.msh_12.value)
            ack.msh.msh_3 = msh.msh_5.value
            ack.msh.msh_4 = msh.msh_6.value
            ack.msh.msh_5 = msh.msh_3.value
            ack.msh.msh_6 = msh.msh_4.value
            ack.msh.msh_10 = "ACK" + msh.msh_10.value
            ack.msh.msh_11 = msh.msh_11.value
            ack.msa.msa_1 = "AA"
            ack.msa.msa_2 = msh.msh_10.value
            framed = ack.to_mllp()
            # What goes on the wire between the frame's start and end bytes.
            record(log, msh.msh_10.value, framed[1:-2])
            return framed

    handlers = {"ADT^A01^ADT_A01": (AckHandler,), "ADT^A01": (AckHandler,),
                "ORU^R01^ORU_R01": (AckHandler,), "ORU^R01": (AckHandler,)}
    server = MLLPServer("127.0.0.1", 0, handlers, timeout=10)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # runs until the test closes our stdin
    server.shutdown()


def message(i):
    return ("MSH|^~\\&|PYHL7|WARD|ENGINE|HOSP|20261126120000||ADT^A01^ADT_A01|PY-%04d|P|2.5.1\r"
            "EVN|A01|20261126120000\r"
            "PID|1||MRN%04d^^^HOSP^MR||DOE^JOHN||19700101|M\r" % (i, i))


async def client(host, port, ca, cert, key, count):
    import hl7
    from hl7.mllp import open_hl7_connection

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    reader, writer = await open_hl7_connection(host, int(port), ssl=ctx, server_hostname="localhost")
    ok = 0
    for i in range(count):
        writer.writemessage(hl7.parse(message(i)))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), 15)
        code, control_id = str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])
        if code != "AA" or control_id != "PY-%04d" % i:
            print("bad ACK for PY-%04d: %s %s" % (i, code, control_id))
            return 1
        ok += 1
    writer.close()
    await writer.wait_closed()
    print("acknowledged %d/%d" % (ok, count))
    return 0


def hl7_engine(log):
    import hl7
    from hl7.mllp import start_hl7_server

    async def process(reader, writer):
        while not writer.is_closing():
            try:
                msg = await reader.readmessage()
            except asyncio.IncompleteReadError:
                break
            ack = msg.create_ack("AA")
            record(log, str(msg.segment("MSH")[10]), str(ack))
            writer.writemessage(ack)
            await writer.drain()
        writer.close()

    async def main():
        async with await start_hl7_server(process, host="127.0.0.1", port=0) as server:
            print(server.sockets[0].getsockname()[1], flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


async def plain_client(host, port, count, prefix):
    import hl7
    from hl7.mllp import open_hl7_connection

    reader, writer = await open_hl7_connection(host, int(port))
    for i in range(count):
        control_id = "%s-%04d" % (prefix, i)
        writer.writemessage(hl7.parse(message(i).replace("PY-%04d" % i, control_id)))
        await writer.drain()
        # readblock gives the raw bytes between the frame's start and end: what the engine wrote.
        block = await asyncio.wait_for(reader.readblock(), 15)
        print(json.dumps({"control_id": control_id, "ack": block.decode("latin-1")}), flush=True)
    writer.close()
    await writer.wait_closed()
    return 0


def parse_nak(path):
    import hl7
    from hl7apy.parser import parse_message

    raw = open(path, "rb").read().decode("latin-1")
    m = hl7.parse(raw)
    # ERR-3 (code^text^table) from v2.5; ERR-1.4 (…^code&text&table) before.
    code = m.extract_field("ERR", 1, 3, 1, 1) or m.extract_field("ERR", 1, 1, 1, 4, 1)
    print("python-hl7", m.extract_field("MSA", 1, 1), m.extract_field("MSA", 1, 2), code)
    h = parse_message(raw, find_groups=False, validation_level=2)
    if h.msh.msh_12.value.startswith(("2.1", "2.2", "2.3", "2.4")):
        code = h.err.err_1.cm_eld_4.ce_1.to_er7()
    else:
        code = h.err.err_3.err_3_1.value
    print("hl7apy", h.msa.msa_1.value, h.msa.msa_2.value, code)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "engine":
        engine(sys.argv[2] if len(sys.argv) > 2 else None)
    elif role == "hl7-engine":
        hl7_engine(sys.argv[2])
    elif role == "plain-client":
        sys.exit(asyncio.run(plain_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
    elif role == "client":
        sys.exit(asyncio.run(client(*sys.argv[2:7], int(sys.argv[7]))))
    elif role == "parse-nak":
        parse_nak(sys.argv[2])
    else:
        sys.exit("unknown role " + role)
