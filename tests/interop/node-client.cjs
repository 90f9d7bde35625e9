// node-hl7-client over mutual TLS: sends COUNT messages through mllp-proxy, one at a time as a
// sending system does, and checks that every ACK is AA with the message's control ID.
//   node node-client.cjs HOST PORT CA CERT KEY COUNT [EXPECTED_CODE, default AA]
//
// Two quirks of node-hl7-client 3.2 shape this script: messages queued before the connection
// is up make its flush loop spin forever when waitAck is set (so the first message is sent on
// "connect", each next one from the ACK handler), and Message({text}) trims the final segment
// terminator (so a strict route answers AE 100; the test uses a lenient route for it).
"use strict";
const fs = require("fs");
const { Client, Message } = require("node-hl7-client");

const [host, port, ca, cert, key, countArg] = process.argv.slice(2);
const count = Number(countArg);
const expected = process.argv[8] || "AA";
const client = new Client({
  host,
  tls: { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key), servername: "localhost" },
});

const id = (i) => `NODE-${String(i).padStart(4, "0")}`;
const message = (i) =>
  new Message({
    text:
      `MSH|^~\\&|NODEHL7|WARD|ENGINE|HOSP|20261126120000||ADT^A01^ADT_A01|${id(i)}|P|2.5.1\r` +
      `EVN|A01|20261126120000\r` +
      `PID|1||MRN${i}^^^HOSP^MR||ROE^RICHARD||19750101|M\r`,
  });

let next = 0;
const bad = [];
const finish = async (code, text) => {
  console.log(text);
  await conn.close();
  process.exit(code);
};
const conn = client.createConnection({ port: Number(port), waitAck: true }, async (res) => {
  const m = res.getMessage();
  const [code, acked] = [m.get("MSA.1").toString(), m.get("MSA.2").toString()];
  if (code !== expected || acked !== id(next - 1)) bad.push(`${id(next - 1)}: ${code} ${acked}`);
  if (next < count) return conn.sendMessage(message(next++));
  await finish(bad.length ? 1 : 0, bad.length ? `bad ACKs: ${bad.join(", ")}` : `${expected} for ${count}/${count}`);
});
let started = false;
conn.on("connect", () => {
  if (!started) {
    started = true;
    conn.sendMessage(message(next++));
  }
});
setTimeout(() => finish(1, `timed out after ${next} messages`), 30000);
