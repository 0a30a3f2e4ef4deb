"""runner serve's page in Chromium, as a user uses it: load the page, choose IMAGE through the file
input, wait for the answer, and print what the page shows as JSON (the top-1 label, the number of
bars, the model line, the timing line, the error). SCREENSHOT ('' for none) gets a PNG of the page.

    python3 tests/serve_page.py URL IMAGE SCREENSHOT
"""
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, image, screenshot = sys.argv[1:4]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,700"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(url)
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(image)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#top li") or d.find_element(By.ID, "error").text)
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#top li .label")]
    shown = {
        "top1": labels[0] if labels else "",
        "bars": len(driver.find_elements(By.CSS_SELECTOR, "#top li .fill")),
        "model": driver.find_element(By.ID, "model").text,
        "timing": driver.find_element(By.ID, "timing").text,
        "error": driver.find_element(By.ID, "error").text,
    }
    if screenshot:
        driver.save_screenshot(screenshot)
    print(json.dumps(shown))
finally:
    driver.quit()
