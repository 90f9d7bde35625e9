// node-hl7-server 2.5 as the legacy engine: answers AA to every message and prints
// "RECEIVED <MSH-10>" for each message its application sees.
//   node node-server.cjs [PORT]
// prints "LISTENING <port>" once it listens: with PORT 0 (the default) a port the OS picked,
// which no other test can be handed meanwhile.
// Its quirk, which the proxy's upstream.messages_per_connection: 1 absorbs: it never clears
// its receive buffer, so the k-th message on one connection hands messages 1..k to the
// application again and writes k ACKs.
"use strict";
const { Server } = require("node-hl7-server");

const port = Number(process.argv[2] || 0);
const server = new Server({ bindAddress: "127.0.0.1" });
const inbound = server.createInbound({ port }, async (req, res) => {
  const id = req.getMessage().get("MSH.10").toString();
  console.log(`RECEIVED ${id}`);
  await res.sendResponse("AA");
});
// The listening socket is the library's own field; it reports no other way which port it got.
inbound.on("listen", () => console.log(`LISTENING ${inbound._socket.address().port}`));
inbound.on("error", (e) => {
  console.log(`ERROR ${e.code || e.message}`);
  process.exit(1);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
