#include "daemon/common/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>

namespace toolgate {
namespace {

constexpr char kHex[] = "0123456789abcdef";

void AppendHex(const unsigned char* p, size_t n, std::string* out) {
  const size_t at = out->size();
  out->resize(at + n * 2);
  char* w = out->data() + at;
  for (size_t i = 0; i < n; ++i) {
    w[2 * i] = kHex[p[i] >> 4];
    w[2 * i + 1] = kHex[p[i] & 0xf];
  }
}

}  // namespace

std::string Sha256Hex(std::string_view data) {
  std::string out;
  AppendSha256Hex(data, &out);
  return out;
}

void AppendSha256Hex(std::string_view data, std::string* out) {
  // OpenSSL 3's one-shot SHA256() fetches the algorithm (under a lock) on every call; a fetched
  // EVP_MD and a per-thread context make hashing ~2x cheaper on the per-event path.
  static EVP_MD* const md_sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  thread_local struct Ctx {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~Ctx() { EVP_MD_CTX_free(ctx); }
  } t;
  unsigned char md[SHA256_DIGEST_LENGTH];
  unsigned int len = 0;
  if (md_sha256 == nullptr || t.ctx == nullptr ||
      EVP_DigestInit_ex2(t.ctx, md_sha256, nullptr) != 1 ||
      EVP_DigestUpdate(t.ctx, data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(t.ctx, md, &len) != 1) {
    std::abort();  // a broken libcrypto is a broken invariant
  }
  AppendHex(md, sizeof(md), out);
}

std::string HmacSha256Hex(std::string_view key, std::string_view data) {
  std::string out;
  AppendHmacSha256Hex(key, data, &out);
  return out;
}

void AppendHmacSha256Hex(std::string_view key, std::string_view data, std::string* out) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &len);
  AppendHex(md, len, out);
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string NewUuid() {
  // A per-thread generator seeded from the OS CSPRNG: ids must be unique, not secret,
  // and RAND_bytes per event would cost more than the rest of normalization.
  thread_local std::mt19937_64 gen = [] {
    uint64_t seed[2] = {0, 0};
    if (RAND_bytes(reinterpret_cast<unsigned char*>(seed), sizeof(seed)) != 1) std::abort();
    std::seed_seq seq{static_cast<uint32_t>(seed[0]), static_cast<uint32_t>(seed[0] >> 32),
                      static_cast<uint32_t>(seed[1]), static_cast<uint32_t>(seed[1] >> 32)};
    return std::mt19937_64(seq);
  }();
  uint64_t hi = gen(), lo = gen();
  unsigned char b[16];
  std::memcpy(b, &hi, 8);
  std::memcpy(b + 8, &lo, 8);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  std::string out(36, '-');
  size_t o = 0;
  for (int i = 0; i < 16; ++i) {
    if (o == 8 || o == 13 || o == 18 || o == 23) ++o;
    out[o++] = kHex[b[i] >> 4];
    out[o++] = kHex[b[i] & 0xf];
  }
  return out;
}

}  // namespace toolgate
