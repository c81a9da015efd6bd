/* Sends a few events to a running collector: sluice-example [URL [WRITE_KEY]] */
#include <sluice.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    sluice_config cfg;
    sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
    cfg.endpoint = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
    cfg.write_key = argc > 2 ? argv[2] : "wk_test_123";
    sluice_client *c;
    int rc = sluice_client_new(&c, &cfg);
    if (rc) return fprintf(stderr, "sluice: %s\n", sluice_strerror(rc)), 1;
    sluice_props *p = sluice_props_new();
    sluice_props_set_str(p, "plan", "pro");
    sluice_props_set_int(p, "seats", 7);
    sluice_identify(c, "user-1", p);
    sluice_group(c, "user-1", "acct-42", NULL);
    for (int i = 0; i < 10 && rc == 0; i++)
        rc = sluice_track(c, "user-1", "Report Viewed", p);
    sluice_props_free(p);
    int lost = sluice_client_close(c, 5000);
    printf("events not delivered: %d\n", lost);
    return rc != 0 || lost != 0;
}
