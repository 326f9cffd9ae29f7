'use strict'
// RSA interop oracle for tests/rsa_crypto.rs: the real megajs 1.3.10 (MEGA's raw RSA and MPI
// formats) and @filen/sdk 0.3.12 (RSA-OAEP-SHA512 with DER keys).
//
// Reads `{ "ops": [ ... ] }` as JSON on stdin and prints `{ "results": [ ... ] }`, one result per
// op, in order.
//
// megajs keeps its RSA code (`cryptoDecodePrivKey`, `cryptoRsaDecrypt`, `mpi2b`, `b2s`) private;
// it is reachable only through `Storage#login` and `Storage#decryptRsaKey`. So the `login` op
// runs a complete real login against a fake gateway (megajs's `fetch` option) that plays the
// server, and everything reported comes out of megajs's own state afterwards.
//
// Ops:
//   login {email, password, version, salt?, master?, k?, privk, csid, user, nodes?, rsa_keys?}
//         -> {sid, user, master, nodes: [{h, name, key}], rsa_plain: [hex]}
//         version 2: the fake server wraps `master` (hex) under PBKDF2-SHA512(password, salt)
//         itself; version 1: `k` is given (the mega-mock fixture). megajs decrypts `privk` with
//         the master key, `csid` with the RSA key, and reports `sid`. `nodes` are then imported
//         with `Storage#_importFile` (what `f` does for every node), which decrypts
//         RSA-encrypted `k` entries and the attributes; `rsa_keys` (base64url ciphertexts) go
//         through `Storage#decryptRsaKey` and come back as the full plaintext megajs sees.
//   webclient_key {master, user}
//         -> {privk, pubk, csid, sid, folder_key, folder_key_ct}
//         A key pair made by Node's OpenSSL and serialized the way the 2018 webclient did for the
//         mega-mock fixture (MPI headers = bytes × 8, e = 257, 254-byte csid plaintext, keys
//         padded to modulus bytes − 2), for the Rust side to read.
//   oaep_keypair {} -> {publicKey, privateKey}     @filen/sdk `generateKeyPair` (RSA-4096)
//   oaep_encrypt {publicKey, plaintext} -> {node, sdk}
//         Node's `publicEncrypt` with `oaepHash: "sha512"`, and the SDK's `metadataPublic`.
//   oaep_decrypt {privateKey, ciphertext} -> {node, sdk} (either may be {error})
//         Node's `privateDecrypt` with `oaepHash: "sha512"`, and the SDK's `metadataPrivate`.

const crypto = require('crypto')
const mega = require('megajs')
const { FilenSDK } = require('@filen/sdk')
const filenUtils = require('@filen/sdk/dist/node/crypto/utils.js')

const e64 = (b) => Buffer.from(b).toString('base64').replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
const d64 = (s) => Buffer.from(s, 'base64')

function ecb (key, data) {
  const cipher = crypto.createCipheriv('aes-128-ecb', key, null).setAutoPadding(false)
  return Buffer.concat([cipher.update(data), cipher.final()])
}

function jsonResponse (body) {
  return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } })
}

function opLogin (op) {
  let k = op.k
  if (op.version === 2) {
    const dk = crypto.pbkdf2Sync(Buffer.from(op.password, 'utf8'), d64(op.salt), 100000, 32, 'sha512')
    k = e64(ecb(dk.subarray(0, 16), Buffer.from(op.master, 'hex')))
  }
  const fetch = async (url, opts) => {
    const [cmd] = JSON.parse(opts.body)
    if (cmd.a === 'us0') return jsonResponse(op.version === 2 ? [{ v: 2, s: op.salt }] : [{ v: 1 }])
    if (cmd.a === 'us') return jsonResponse([{ k, csid: op.csid, privk: op.privk, u: op.user }])
    if (cmd.a === 'ug') return jsonResponse([{ u: op.user, name: 'RSA Test', email: op.email }])
    return jsonResponse([-11])
  }
  const storage = new mega.Storage({
    email: op.email,
    password: op.password,
    keepalive: false,
    autoload: false,
    autologin: false,
    gateway: 'http://127.0.0.1:9/',
    fetch
  })
  return storage.login().then(() => {
    // `f` would fill these; with autoload off they are still unset.
    storage.shareKeys = {}
    storage.mounts = []
    const nodes = (op.nodes || []).map((node) => {
      const file = storage._importFile(node)
      return { h: node.h, name: file.name, key: file.key ? Buffer.from(file.key).toString('hex') : null }
    })
    const rsaPlain = (op.rsa_keys || []).map((ct) => Buffer.from(storage.decryptRsaKey(d64(ct))).toString('hex'))
    return {
      sid: storage.sid,
      user: storage.user,
      master: Buffer.from(storage.key).toString('hex'),
      nodes,
      rsa_plain: rsaPlain
    }
  })
}

// MPI with the header set to bytes × 8, as the webclient's serializer wrote keys.
function mpiBytesHeader (buf) {
  let i = 0
  while (i < buf.length - 1 && buf[i] === 0) i++
  const mag = buf.subarray(i)
  const head = Buffer.alloc(2)
  head.writeUInt16BE(mag.length * 8)
  return Buffer.concat([head, mag])
}

// MPI with the exact bit count, as ciphertexts are written.
function mpiExact (buf) {
  let i = 0
  while (i < buf.length - 1 && buf[i] === 0) i++
  const mag = buf.subarray(i)
  const bits = (mag.length - 1) * 8 + (32 - Math.clz32(mag[0]))
  const head = Buffer.alloc(2)
  head.writeUInt16BE(bits)
  return Buffer.concat([head, mag])
}

function rawEncrypt (publicKey, plain, modulusLen) {
  const block = Buffer.alloc(modulusLen)
  plain.copy(block, modulusLen - plain.length)
  return crypto.publicEncrypt({ key: publicKey, padding: crypto.constants.RSA_NO_PADDING }, block)
}

function opWebclientKey (op) {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 257 })
  const jwk = privateKey.export({ format: 'jwk' })
  const n = d64(jwk.n)
  // MEGA's u is p⁻¹ mod q; JWK's qi is q⁻¹ mod p. Swapping the primes' roles makes qi MEGA's u.
  const blob = Buffer.concat([d64(jwk.q), d64(jwk.p), d64(jwk.d), d64(jwk.qi)].map(mpiBytesHeader))
  const padded = Buffer.concat([blob, Buffer.alloc((16 - (blob.length % 16)) % 16)])
  const privk = e64(ecb(Buffer.from(op.master, 'hex'), padded))
  const pubk = e64(Buffer.concat([mpiBytesHeader(n), mpiBytesHeader(d64(jwk.e))]))

  const sid = crypto.randomBytes(43)
  sid[0] |= 0x80
  Buffer.from(op.user, 'ascii').copy(sid, 16)
  const csidPlain = Buffer.concat([sid, crypto.randomBytes(254 - 43)])
  const csid = e64(mpiExact(rawEncrypt(publicKey, csidPlain, n.length)))

  const folderKey = crypto.randomBytes(16)
  folderKey[0] = 0 // the case where megajs's zero stripping and the SDK's window disagree
  const keyPlain = Buffer.concat([folderKey, crypto.randomBytes(n.length - 2 - 16)])
  const folderKeyCt = e64(mpiExact(rawEncrypt(publicKey, keyPlain, n.length)))
  return { privk, pubk, csid, sid: e64(sid), folder_key: folderKey.toString('hex'), folder_key_ct: folderKeyCt }
}

let sdk = null
function filen () {
  if (!sdk) sdk = new FilenSDK({ connectToSocket: false, metadataCache: false })
  return sdk
}

// Node takes DER keys directly; the SDK converts the same base64 to PEM itself.
function derKey (b64, type) {
  return { key: d64(b64), format: 'der', type }
}

async function settle (fn) {
  try {
    return await fn()
  } catch (error) {
    return { error: String(error && error.message ? error.message : error) }
  }
}

async function opOaepKeypair () {
  return filenUtils.generateKeyPair()
}

async function opOaepEncrypt (op) {
  const node = crypto.publicEncrypt(
    { ...derKey(op.publicKey, 'spki'), padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha512' },
    Buffer.from(op.plaintext, 'utf8')
  ).toString('base64')
  const viaSdk = await filen().crypto().encrypt().metadataPublic({ metadata: op.plaintext, publicKey: op.publicKey })
  return { node, sdk: viaSdk }
}

async function opOaepDecrypt (op) {
  const node = await settle(async () =>
    crypto.privateDecrypt(
      { ...derKey(op.privateKey, 'pkcs8'), padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha512' },
      d64(op.ciphertext)
    ).toString('utf8')
  )
  const viaSdk = await settle(() =>
    filen().crypto().decrypt().metadataPrivate({ metadata: op.ciphertext, privateKey: op.privateKey })
  )
  return { node, sdk: viaSdk }
}

const OPS = {
  login: opLogin,
  webclient_key: opWebclientKey,
  oaep_keypair: opOaepKeypair,
  oaep_encrypt: opOaepEncrypt,
  oaep_decrypt: opOaepDecrypt
}

async function main () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  const request = JSON.parse(Buffer.concat(chunks).toString('utf8'))
  const results = []
  for (const op of request.ops) {
    const run = OPS[op.op]
    if (!run) throw Error(`unknown op ${op.op}`)
    results.push(await run(op))
  }
  process.stdout.write(JSON.stringify({ results }))
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`)
  process.exit(1)
})
