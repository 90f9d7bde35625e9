#!/usr/bin/env python3
"""Writes the validation corpus: tests/data/corpus/NAME.hl7 (raw message bytes, no MLLP
framing) and tests/data/corpus.tsv (the expected outcome per route mode).

Outcomes:  fwd           forwarded byte-identical, the engine's AA relayed
           norm          forwarded with segment terminators normalised to CR, AA relayed
           nak:CODE:ERR  NAK from the proxy with MSA-1 CODE and ERR code ERR, not forwarded
           ackfwd        an acknowledgment: forwarded, never answered
           drop          an acknowledgment the proxy refuses: not forwarded, never answered
           closed        the connection is closed without an answer
Modes: strict, lenient, off, and "allow" (strict with message_types [ADT^*, ORU^R01],
versions [2.3, 2.5.1], processing_ids [P]). Routes use max_message_bytes 4096.
Patients are made up.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
MSH = "MSH|^~\\&|ADT|WARD|LAB|HOSP|20261126120000||{type}|{id}|{pid}|{ver}{tail}"


def msh(id, type="ADT^A01^ADT_A01", ver="2.5.1", pid="P", tail=""):
    return MSH.format(type=type, id=id, ver=ver, pid=pid, tail=tail)


PID = "PID|1||MRN4711^^^HOSP^MR||DOE^JANE||19800101|F"
CASES = []


def case(name, data, strict, lenient, off, allow=None):
    if isinstance(data, str):
        data = data.encode("latin-1")
    CASES.append((name, data, strict, lenient, off, allow or strict))


def segs(*s, end="\r"):
    return end.join(s) + end


ok = "fwd"
case("good-adt", segs(msh("C01"), "EVN|A01|20261126120000", PID, "PV1|1|I|W1^1^A"), ok, ok, ok)
case("good-oru", segs(msh("C02", "ORU^R01^ORU_R01"), PID, "OBR|1|O1|F1|1^X^L", "OBX|1|NM|2^Y^L||7.1|mmol/L|||||F"), ok, ok, ok)
case("no-msh", segs(PID, "PV1|1|I"), "nak:AE:100", "nak:AE:100", ok)
case("missing-msh10", segs(msh(""), PID), "nak:AE:101", "nak:AE:101", ok)
case("missing-msh9", segs(msh("C05", type=""), PID), "nak:AE:101", "nak:AE:101", ok)
case("missing-msh12", segs(msh("C06", ver=""), PID), "nak:AE:101", "nak:AE:101", ok)
case("odd-field-separator", segs("MSH#^~\\&#ADT#WARD#LAB#HOSP#20261126##ADT^A01#C07#P#2.5.1", "PID#1##MRN1"), ok, ok, ok)
case("alphanumeric-field-separator", segs("MSHX^~\\&XADTXWARD", PID), "nak:AE:102", "nak:AE:102", ok)
case("duplicate-encoding-characters", segs("MSH|^^\\&|ADT|WARD|LAB|HOSP|1||ADT^A01|C09|P|2.5.1", PID), "nak:AE:102", "nak:AE:102", ok)
case("three-encoding-characters", segs("MSH|^~\\|ADT|WARD|LAB|HOSP|1||ADT^A01|C10|P|2.5.1", PID), "nak:AE:102", "nak:AE:102", ok)
case("five-encoding-characters", segs("MSH|^~\\&#|ADT|WARD|LAB|HOSP|1||ADT^A01^ADT_A01|C11|P|2.7", PID), ok, ok, ok, "nak:AR:203")
case("lower-case-segment-id", segs(msh("C12"), "pid|1||MRN1"), "nak:AE:100", "nak:AE:100", ok)
case("empty-segment", segs(msh("C13"), "", PID), "nak:AE:100", "nak:AE:100", ok)
case("lf-terminators", segs(msh("C14"), PID, end="\n"), "nak:AE:100", "norm", ok)
case("crlf-terminators", segs(msh("C15"), PID, end="\r\n"), "nak:AE:100", "norm", ok)
case("missing-final-cr", msh("C16") + "\r" + PID, "nak:AE:100", "norm", ok)
case("mixed-terminators", msh("C17") + "\r\n" + PID + "\nPV1|1|I\r", "nak:AE:100", "norm", ok)
# Framing bytes inside a message would split it at the engine: refused in every mode.
case("start-block-inside", segs(msh("C18"), "PID|1||\x0bMRN1"), "nak:AE:102", "nak:AE:102", "nak:AE:102")
case("end-block-inside", segs(msh("C19"), "PID|1||\x1cMRN1"), "nak:AE:102", "nak:AE:102", "nak:AE:102")
case("iso-8859-1-names", segs(msh("C20", tail="||||||8859/1"), "PID|1||MRN1||M\xfcLLER^J\xfcRGEN||19700101|M"), ok, ok, ok)
case("utf-8-names", (segs(msh("C21", tail="||||||UNICODE UTF-8")) + "PID|1||MRN1||").encode() + "ÅSTRÖM^BJÖRN\r".encode("utf-8"), ok, ok, ok)
case("very-long-field", segs(msh("C22", "ORU^R01^ORU_R01"), PID, "OBX|1|TX|3^Z^L||" + "A" * 3000 + "||||||F"), ok, ok, ok)
case("oversize-with-msh", segs(msh("C23"), PID, "NTE|1||" + "B" * 6000), "nak:AE:207", "nak:AE:207", "nak:AE:207")
case("oversize-without-msh", "x" * 6000, "closed", "closed", "closed")
case("batch-fhs-bhs", segs("FHS|^~\\&|ADT|WARD", "BHS|^~\\&|ADT|WARD", msh("C25"), PID, "BTS|1", "FTS|1"), "nak:AE:100", "nak:AE:100", ok)
case("acknowledgment", segs(msh("C26", "ACK^A01^ACK"), "MSA|AA|ORIG-1"), "ackfwd", "ackfwd", "ackfwd")
case("acknowledgment-without-msh10", segs(msh("", "ACK^A01^ACK"), "MSA|AA|ORIG-2"), "drop", "drop", "ackfwd")
case("unsupported-message-type", segs(msh("C28", "ORM^O01^ORM_O01"), PID), ok, ok, ok, "nak:AR:200")
case("unsupported-trigger", segs(msh("C29", "ORU^R30^ORU_R30"), PID), ok, ok, ok, "nak:AR:200")
case("unsupported-version", segs(msh("C30", ver="2.4"), PID), ok, ok, ok, "nak:AR:203")
case("unsupported-processing-id", segs(msh("C31", pid="T"), PID), ok, ok, ok, "nak:AR:202")
case("enhanced-mode-missing-field", segs(msh("C32", ver="", tail="|||AL|NE"), PID), "nak:CE:101", "nak:CE:101", ok)
case("enhanced-mode-unsupported-type", segs(msh("C33", "ORM^O01", tail="|||AL|NE"), PID), ok, ok, ok, "nak:CR:200")
case("version-with-internationalisation", segs(msh("C34", ver="2.5.1^USA"), PID), ok, ok, ok)
case("message-type-without-trigger", segs(msh("C35", "ADT"), PID), ok, ok, ok)
case("z-segment", segs(msh("C36"), PID, "ZPI|1|local"), ok, ok, ok)
case("two-character-segment-id", segs(msh("C37"), "ZX|1"), "nak:AE:100", "nak:AE:100", ok)
case("four-character-segment-id", segs(msh("C38"), "PIDX|1"), "nak:AE:100", "nak:AE:100", ok)
case("whitespace-before-msh", segs(" " + msh("C39"), PID), "nak:AE:100", "nak:AE:100", ok)
case("empty-message", "", "nak:AE:100", "nak:AE:100", ok)
case("msh-only", segs(msh("C41")), ok, ok, ok)
case("whitespace-segment", segs(msh("C42"), PID, " "), "nak:AE:100", "nak:AE:100", ok)
# Other C0 controls (NUL, ESC, …) may make the engine parse differently: strict and lenient
# refuse them; off mode forwards them.
case("nul-bytes-in-field", segs(msh("C43"), "NTE|1||a\x00b"), "nak:AE:102", "nak:AE:102", ok)
case("nul-in-msh3", "MSH|^~\\&|LAB\x00|WARD|ENGINE|HOSP|20261126120000||ADT^A01^ADT_A01|C49|P|2.5.1\rPID|1||MRN1\r", "nak:AE:102", "nak:AE:102", ok)
case("escape-in-field", segs(msh("C50"), "NTE|1||\x1b[31mRED"), "nak:AE:102", "nak:AE:102", ok)
case("truncated-msh", segs("MSH|^~\\&|ADT"), "nak:AE:101", "nak:AE:101", ok)
case("many-segments", segs(msh("C45"), *["NTE|%d" % i for i in range(400)]), ok, ok, ok)
case("version-2-3", segs(msh("C46", ver="2.3"), PID), ok, ok, ok)
case("old-version-missing-control-id", segs(msh("", ver="2.3"), PID), "nak:AE:101", "nak:AE:101", ok)
case("escape-sequences", segs(msh("C48"), "NTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"), ok, ok, ok)

if __name__ == "__main__":
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    with open(os.path.join(HERE, "corpus.tsv"), "w") as tsv:
        tsv.write("# name\tstrict\tlenient\toff\tallow   (written by make-corpus.py)\n")
        for name, data, *outcomes in CASES:
            with open(os.path.join(out, name + ".hl7"), "wb") as f:
                f.write(data)
            tsv.write("\t".join([name, *outcomes]) + "\n")
    print(len(CASES), "cases")
