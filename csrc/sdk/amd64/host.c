/* host.c - talking to the host: host function calls, logging, printing,
 * aborting (docs/abi.md, ports 99-103). Each is one record and one `out`. */
#include "hl_internal.h"

hl_value hl_str(const char *s) {
  if (s == NULL) s = "";
  hl_value v = {.type = HL_STR, .len = (uint32_t)strlen(s), .str = s};
  return v;
}

/* Sets *ret to a message the SDK owns and returns code. */
static uint32_t local_error(hl_value *ret, uint32_t code, const char *msg) {
  *ret = hl_str(msg);
  return code;
}

/* Storage for the one formatted message a failed host call may return; it
 * stays valid until the next host call, like the host's own messages. */
static hl_msg host_call_message;

/* Reads the host's answer to a CALL_FUNCTION exit from the input buffer. */
static uint32_t read_host_reply(const char *name, hl_type ret_type, hl_value *ret) {
  hl_record rec;
  if (!hl_record_peek(&hl_input_buffer, &rec))
    return local_error(ret, HL_ERR_MALFORMED, "malformed reply to a host call: bad top, back-pointer or length");
  hl_record_pop(&hl_input_buffer, &rec); /* the bytes stay until the next push */
  hl_reader r;
  hl_reader_init(&r, &rec);

  if (rec.kind == HL_REC_ERROR) {
    uint32_t code = hl_get_u32(&r);
    uint32_t len;
    const char *msg = hl_get_str(&r, &len);
    if (!hl_reader_done(&r) || code == 0)
      return local_error(ret, HL_ERR_MALFORMED, "malformed ERROR record in reply to a host call");
    ret->type = HL_STR;
    ret->str = msg;
    ret->len = len;
    return code;
  }
  if (rec.kind != HL_REC_RETURN)
    return local_error(ret, HL_ERR_MALFORMED, "reply to a host call is neither RETURN nor ERROR");

  hl_value v;
  hl_get_value(&r, &v);
  if (!hl_reader_done(&r)) return local_error(ret, HL_ERR_MALFORMED, "malformed RETURN record from a host call");
  if (v.type != ret_type) {
    hl_msg *m = &host_call_message;
    hl_msg_init(m);
    hl_msg_str(m, "host function ");
    hl_msg_str(m, name);
    hl_msg_str(m, " returned ");
    hl_msg_str(m, hl_type_name(v.type));
    hl_msg_str(m, ", expected ");
    hl_msg_str(m, hl_type_name(ret_type));
    return local_error(ret, HL_ERR_HOST_FUNCTION_NOT_FOUND, m->text);
  }
  *ret = v;
  return 0;
}

uint32_t hl_call_host(const char *name, hl_type ret_type, int nargs, const hl_value *args, hl_value *ret) {
  hl_value ignored;
  if (ret == NULL) ret = &ignored;
  if (name == NULL || nargs < 0 || nargs > UINT8_MAX || (nargs > 0 && args == NULL) ||
      (unsigned)ret_type > HL_BYTES)
    return local_error(ret, HL_ERR_GENERIC, "hl_call_host: bad arguments");

  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_CALL);
  hl_put_name(&w, name, strlen(name));
  hl_put_u8(&w, (uint8_t)nargs);
  for (int i = 0; i < nargs; i++) hl_put_value(&w, &args[i]);
  if (!hl_record_end(&w))
    return local_error(ret, HL_ERR_GENERIC, "hl_call_host: call does not fit in the output buffer");

  HL_EXIT(HL_PORT_CALL_FUNCTION); /* the host pops the CALL and pushes its reply on the input buffer */
  return read_host_reply(name, ret_type, ret);
}

/* ---- raw host calls ---- */

static void raw_call_exit(void) { HL_EXIT(HL_PORT_CALL_FUNCTION); }

uint32_t hl_call_host_raw(uint32_t fn_id, const void *req, uint32_t req_len, const uint8_t **resp,
                          uint32_t *resp_len) {
  return hl_raw_call(fn_id, req, req_len, resp, resp_len, raw_call_exit);
}

uint64_t hl_guest_counter(void) { return hl_guest_counter_ptr != NULL ? *hl_guest_counter_ptr : 0; }

/* ---- logging, printing, aborting ---- */

void hl_log_at(int level, const char *file, uint32_t line, const char *message) {
  if (level < hl_min_log_level) return;
  if (level > HL_LOG_CRITICAL) level = HL_LOG_CRITICAL;
  if (level < HL_LOG_TRACE) level = HL_LOG_TRACE;
  if (file == NULL) file = "";
  if (message == NULL) message = "";

  hl_writer w;
  hl_record_begin(&w, &hl_output_buffer, HL_REC_LOG);
  hl_put_u8(&w, (uint8_t)level);
  hl_put_u32(&w, line);
  hl_put_str_fit(&w, file, strlen(file), 5); /* keep room for an empty message */
  hl_put_str_fit(&w, message, strlen(message), 0);
  if (hl_record_end(&w)) HL_EXIT(HL_PORT_LOG);
}

int32_t hl_print(const char *text) {
  if (text == NULL) text = "";
  return hl_print_n(text, strlen(text));
}

int32_t hl_print_n(const char *text, size_t len) {
  uint32_t n;
  if (len == 0 || !hl_push_print(text, len, &n)) return 0;
  HL_EXIT(HL_PORT_PRINT);
  return (int32_t)n;
}

void hl_abort(int32_t code, const char *message) {
  if (message == NULL) message = "";
  hl_buffer_reset(&hl_output_buffer);
  hl_push_error((uint32_t)code, message, strlen(message));
  /* The host never resumes an aborted guest; if it does, abort again. */
  for (;;) HL_OUT(HL_PORT_ABORT);
}
